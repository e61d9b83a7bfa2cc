/**
 * dockerd --userns-remap with the graph driver: ordinary layers are extracted
 * with the Init UID/GID maps, thin-image layers are used through idmapped
 * mounts, so owners are right inside the container either way, and commits
 * map ids back. Needs temporary /etc/subuid and /etc/subgid entries: both
 * files are restored byte for byte afterwards.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { buildImage, buildThinImage, busyboxEntries, unpackDuccStyle, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, removeTestDir, shortTempDir, startDockerd, startPlugin, type Plugin } from './harness.js';

const REPO = 'unpacked.cern.ch';
const BASE = 300000;
const SIZE = 65536;

interface Saved {
  file: string;
  content: Buffer | null;
  mode: number;
}

function saveFile(file: string): Saved {
  return existsSync(file) ? { file, content: readFileSync(file), mode: statSync(file).mode & 0o7777 } : { file, content: null, mode: 0o644 };
}

function restoreFile(s: Saved): void {
  if (s.content === null) rmSync(s.file, { force: true });
  else {
    writeFileSync(s.file, s.content);
    execFileSync('chmod', [s.mode.toString(8), s.file]);
  }
}

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc', 'unshare'] }))('graph driver with dockerd --userns-remap', () => {
  const name = `cvmfs-gd-userns-${process.pid}`;
  let dir: string;
  let repo: string;
  let home: string;
  let plugin: Plugin;
  let dockerd: Dockerd;
  const saved: Saved[] = [];
  const docker = (args: string[], o?: Parameters<Dockerd['docker']>[1]) => dockerd.docker(args, o);
  const run = async (image: string, script: string) => (await docker(['run', '--rm', '--network', 'none', image, 'sh', '-c', script])).stdout;

  beforeAll(async () => {
    for (const f of ['/etc/subuid', '/etc/subgid']) {
      const s = saveFile(f);
      saved.push(s);
      const prev = s.content?.toString() ?? '';
      writeFileSync(f, `${prev}${prev === '' || prev.endsWith('\n') ? '' : '\n'}daemon:${BASE}:${SIZE}\n`);
    }
    dir = shortTempDir('gdu-');
    execFileSync('chmod', ['0711', dir]); // the remapped root must be able to traverse to its data root
    repo = path.join(dir, 'cvmfs', REPO);
    home = path.join(dir, 'd', 'root', `${BASE}.${BASE}`, name);
    mkdirSync(repo, { recursive: true });
    const src = await buildImage('src:1', [
      busyboxEntries(),
      [
        { path: 'data/', type: 'dir' },
        { path: 'data/only-in-cvmfs.txt', content: 'cvmfs\n' },
      ],
    ]);
    for (const l of src.layers) unpackDuccStyle(repo, l);
    const thin = JSON.stringify({ version: '1.0', layers: src.layers.map((l) => ({ digest: l.digest.slice(7) })) });
    await writeDockerArchive(path.join(dir, 'thin.tar'), await buildThinImage('test/thin:1', thin));
    await writeDockerArchive(
      path.join(dir, 'plain.tar'),
      await buildImage('test/plain:1', [[...busyboxEntries(), { path: 'etc/owned', content: 'u\n', uid: 1000, gid: 1000 }]]),
    );
    plugin = await startPlugin(name, ['--state-dir', path.join(dir, 'state'), '--absolute-mountpoint', repo]);
    dockerd = await startDockerd(path.join(dir, 'd'), name, ['--userns-remap=daemon']);
  });

  afterAll(async () => {
    await dockerd?.stop();
    await plugin?.stop();
    for (const s of saved) restoreFile(s);
    if (dir) removeTestDir(dir);
  });

  it('gets the maps in Init and reports them', async () => {
    const info = (await docker(['info'])).stdout;
    expect(info).toContain(`Home: ${home}`);
    expect(info).toContain(`User Namespace: 0:${BASE}:${SIZE}`);
    expect(info).toContain('Idmapped CVMFS Layers: yes');
  });

  it('extracts ordinary layers with the maps: right owners inside, shifted on the host', async () => {
    await docker(['load', '-i', path.join(dir, 'plain.tar')]);
    expect(await run('test/plain:1', 'stat -c "%u:%g %n" /bin/busybox /etc/owned; touch /tmp/new && echo wrote')).toBe(
      '0:0 /bin/busybox\n1000:1000 /etc/owned\nwrote\n',
    );
    const layer = JSON.parse((await docker(['image', 'inspect', '--format', '{{json .GraphDriver.Data}}', 'test/plain:1'])).stdout) as Record<string, string>;
    const upper = layer['UpperDir']!;
    expect(statSync(path.join(upper, 'bin', 'busybox')).uid).toBe(BASE);
    expect(statSync(path.join(upper, 'etc', 'owned')).uid).toBe(BASE + 1000);
  });

  it("shows CVMFS files of a thin image with the container's root as owner (idmapped mounts), writable by it", async () => {
    await docker(['load', '-i', path.join(dir, 'thin.tar')]);
    expect(await run('test/thin:1', 'stat -c "%u:%g %n" /bin/busybox /data/only-in-cvmfs.txt; echo new > /data/new && cat /data/new')).toBe(
      '0:0 /bin/busybox\n0:0 /data/only-in-cvmfs.txt\nnew\n',
    );
    // the CVMFS tree keeps its own owners
    expect(statSync(path.join(repo, '.layers')).uid).toBe(0);
  });

  it("commits a thin container with ids mapped back to the container's", async () => {
    await docker(['run', '--name', 'c1', '--network', 'none', 'test/thin:1', 'sh', '-c', 'echo mine > /data/mine.txt']);
    expect((await docker(['diff', 'c1'])).stdout).toBe('C /data\nA /data/mine.txt\n');
    await docker(['commit', 'c1', 'test/thin:2']);
    await docker(['rm', 'c1']);
    expect(await run('test/thin:2', 'stat -c "%u:%g" /data/mine.txt; cat /data/mine.txt')).toBe('0:0\nmine\n');
    const out = path.join(dir, 'save');
    mkdirSync(out);
    await docker(['save', '-o', path.join(out, 'i.tar'), 'test/thin:2']);
    execFileSync('tar', ['-xf', path.join(out, 'i.tar'), '-C', out]);
    const m = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8')) as { Layers: string[] }[];
    const listing = execFileSync('tar', ['--numeric-owner', '-tvf', path.join(out, m[0]!.Layers[1]!)]).toString();
    expect(listing).toMatch(/0\/0 .* data\/mine\.txt/);
  });

  it('cleans up on rmi', async () => {
    await docker(['rmi', 'test/thin:2', 'test/thin:1', 'test/plain:1']);
    expect(execFileSync('ls', ['-A', path.join(home, 'layers')]).toString()).toBe('');
    expect(execFileSync('ls', ['-A', path.join(home, 'm')]).toString()).toBe('');
  });
});
