/**
 * The managed (v2) plugin form: packaging/graphdriver/build-plugin.sh builds
 * config.json + rootfs from this checkout, `docker plugin create/set/enable`
 * installs it, and dockerd 20.10 restarted with `-s cvmfs/graphdriver` runs
 * an ordinary and a thin image through it (Home under PropagatedMount).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { buildImage, buildThinImage, busyboxEntries, unpackDuccStyle, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, removeTestDir, shortTempDir, startDockerd } from './harness.js';

const BUILD = path.resolve(import.meta.dirname, '../../packaging/graphdriver/build-plugin.sh');
const PLUGIN = 'cvmfs/graphdriver';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc', 'npm', 'unshare'] }))('managed plugin (docker plugin create)', () => {
  let dir: string;
  let cvmfsRoot: string;
  let dockerd: Dockerd | undefined;
  const docker = (args: string[]) => dockerd!.docker(args);

  beforeAll(async () => {
    dir = shortTempDir('gdm-');
    cvmfsRoot = path.join(dir, 'cvmfs');
    const repo = path.join(cvmfsRoot, 'unpacked.cern.ch');
    mkdirSync(repo, { recursive: true });
    const src = await buildImage('src:1', [
      busyboxEntries(),
      [
        { path: 'data/', type: 'dir' },
        { path: 'data/only-in-cvmfs.txt', content: 'managed cvmfs\n' },
      ],
    ]);
    for (const l of src.layers) unpackDuccStyle(repo, l);
    const thin = JSON.stringify({ version: '1.0', layers: src.layers.map((l) => ({ digest: l.digest.slice(7) })) });
    await writeDockerArchive(path.join(dir, 'thin.tar'), await buildThinImage('test/thin:1', thin));
    await writeDockerArchive(path.join(dir, 'plain.tar'), await buildImage('test/plain:1', [[...busyboxEntries(), { path: 'etc/plain', content: 'plain\n' }]]));
    execFileSync('sh', [BUILD, path.join(dir, 'pkg')], { stdio: 'ignore' });
  }, 180_000);

  afterAll(async () => {
    await dockerd?.stop();
    if (dir) removeTestDir(dir);
  });

  it('installs with docker plugin create/set/enable', async () => {
    dockerd = await startDockerd(path.join(dir, 'd'), 'vfs');
    await docker(['plugin', 'create', PLUGIN, path.join(dir, 'pkg')]);
    await docker(['plugin', 'set', PLUGIN, `cvmfs.source=${cvmfsRoot}`]);
    await docker(['plugin', 'enable', PLUGIN]);
    expect((await docker(['plugin', 'ls', '--format', '{{.Name}} {{.Enabled}}'])).stdout).toBe(`${PLUGIN}:latest true\n`);
    await dockerd.stop();
    dockerd = await startDockerd(path.join(dir, 'd'), PLUGIN);
    const info = (await docker(['info'])).stdout;
    expect(info).toContain(`Storage Driver: ${PLUGIN}`);
    expect(info).toContain(`Home: /mnt/${PLUGIN}`);
  }, 120_000);

  it('runs an ordinary image and a thin image, commits on the thin one, and cleans up', async () => {
    await docker(['load', '-i', path.join(dir, 'plain.tar')]);
    expect((await docker(['run', '--rm', '--network', 'none', 'test/plain:1', 'cat', '/etc/plain'])).stdout).toBe('plain\n');
    await docker(['load', '-i', path.join(dir, 'thin.tar')]);
    await docker(['run', '--name', 'c1', '--network', 'none', 'test/thin:1', 'sh', '-c', 'cat /data/only-in-cvmfs.txt > /data/copy']);
    await docker(['commit', 'c1', 'test/thin:2']);
    await docker(['rm', 'c1']);
    expect((await docker(['run', '--rm', '--network', 'none', 'test/thin:2', 'cat', '/data/copy'])).stdout).toBe('managed cvmfs\n');
    await docker(['rmi', 'test/thin:2', 'test/thin:1', 'test/plain:1']);
    const pluginsDir = path.join(dir, 'd', 'root', 'plugins');
    const id = readdirSync(pluginsDir).find((n) => existsSync(path.join(pluginsDir, n, 'propagated-mount')))!;
    expect(readdirSync(path.join(pluginsDir, id, 'propagated-mount', PLUGIN, 'layers'))).toEqual([]);
  }, 120_000);
});
