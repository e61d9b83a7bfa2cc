/**
 * End to end with Debian's dockerd 20.10 (`--experimental -s <plugin>`) and
 * the plugin on a legacy discovery socket: thin images over a CVMFS-style
 * tree, ordinary images, diff/commit/save/rmi, a container start's trace
 * (cvmfs-thin why-slow), plugin and dockerd restarts.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { writeProfilePack } from '../../src/convert/profile-pack.js';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { type AccessProfile, imageDataPath, imagePath, packPath, PROFILE_SCHEMA, profilePath, serializeProfile } from '../../src/core/thin/profile.js';
import { runCli } from '../helpers/daemon.js';
import { needs } from '../helpers/env.js';
import { buildImage, buildThinImage, busyboxEntries, tarOf, unpackDuccStyle, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, layerDirs, type Plugin, removeTestDir, shortTempDir, startDockerd, startPlugin } from './harness.js';

const REPO = 'unpacked.cern.ch';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc', 'unshare'] }))('graph driver plugin with dockerd 20.10', () => {
  const name = `cvmfs-gd-e2e-${process.pid}`;
  let dir: string;
  let repo: string;
  let home: string;
  let plugin: Plugin;
  let dockerd: Dockerd;
  let thinText: string;
  const pluginArgs = () => ['--state-dir', path.join(dir, 'state'), '--absolute-mountpoint', repo, '--start-budget', '60000'];
  const docker = (args: string[], o?: Parameters<Dockerd['docker']>[1]) => dockerd.docker(args, o);
  const run = async (image: string, script: string) => (await docker(['run', '--rm', '--network', 'none', image, 'sh', '-c', script])).stdout;

  beforeAll(async () => {
    dir = shortTempDir('gde-');
    repo = path.join(dir, 'cvmfs', REPO);
    home = path.join(dir, 'd', 'root', name);
    mkdirSync(repo, { recursive: true });
    // the CVMFS side: busybox, then a layer that adds a file and deletes one (DUCC keeps the .wh. file)
    const src = await buildImage('src:1', [
      busyboxEntries('salt-from-base'),
      [
        { path: 'data/', type: 'dir' },
        { path: 'data/only-in-cvmfs.txt', content: 'served from cvmfs\n' },
        { path: 'etc/', type: 'dir' },
        { path: 'etc/.wh.salt', content: '' },
      ],
    ]);
    for (const l of src.layers) unpackDuccStyle(repo, l);
    // the image's access profile, published before it is loaded: read ahead from the load on
    const hexes = src.layers.map((l) => l.digest.slice(7));
    mkdirSync(path.dirname(path.join(repo, profilePath(hexes))), { recursive: true });
    const files = [
      { path: 'bin/busybox', layer: hexes[0], size: readFileSync('/bin/busybox').length },
      { path: 'data/only-in-cvmfs.txt', layer: hexes[1], size: 18 },
    ];
    writeFileSync(
      path.join(repo, profilePath(hexes)),
      serializeProfile({ schema: PROFILE_SCHEMA, version: 1, layers: hexes, prefetch: true, created: new Date().toISOString(), files }),
    );
    thinText = JSON.stringify({
      version: '1.0',
      origin: 'test/src:1',
      layers: src.layers.map((l) => ({ digest: l.digest.slice(7), url: `cvmfs://${REPO}/.layers/${l.digest.slice(7, 9)}/${l.digest.slice(7)}/layerfs` })),
    });
    await writeDockerArchive(path.join(dir, 'thin.tar'), await buildThinImage('test/thin:1', thinText));
    // an ordinary two-layer image whose upper layer deletes a file
    await writeDockerArchive(
      path.join(dir, 'plain.tar'),
      await buildImage('test/plain:1', [
        busyboxEntries('salt-plain'),
        [
          { path: 'etc/', type: 'dir' },
          { path: 'etc/.wh.salt', content: '' },
          { path: 'etc/added', content: 'added in layer 2\n' },
        ],
      ]),
    );
    plugin = await startPlugin(name, pluginArgs());
    dockerd = await startDockerd(path.join(dir, 'd'), name);
  });

  afterAll(async () => {
    await dockerd?.stop();
    await plugin?.stop();
    if (dir) removeTestDir(dir);
  });

  it('is the storage driver dockerd reports', async () => {
    const info = (await docker(['info'])).stdout;
    expect(info).toContain(`Storage Driver: ${name}`);
    expect(info).toContain(`Home: ${home}`);
    expect(info).toContain(`CVMFS Mountpoint: ${repo}`);
    expect(plugin.output()).toContain('GraphDriver.Init');
  });

  it('loads and runs an ordinary image; a file deleted in an upper layer stays deleted', async () => {
    await docker(['load', '-i', path.join(dir, 'plain.tar')]);
    expect(await run('test/plain:1', 'cat /etc/added; test -e /etc/salt && echo salt-present || echo salt-gone; ls -a /etc')).toBe(
      'added in layer 2\nsalt-gone\n.\n..\nadded\nhostname\nhosts\nmtab\npasswd\nresolv.conf\n',
    );
  });

  it('loads a thin image and runs files that exist only in the CVMFS tree', async () => {
    await docker(['load', '-i', path.join(dir, 'thin.tar')]);
    expect(await run('test/thin:1', 'cat /data/only-in-cvmfs.txt; test -e /etc/salt && echo salt-present || echo salt-gone; ls -a /etc; ls /')).toBe(
      'served from cvmfs\nsalt-gone\n.\n..\nhostname\nhosts\nmtab\npasswd\nresolv.conf\nbin\ndata\ndev\netc\nproc\nroot\nsys\ntmp\nvar\n',
    );
    const data = JSON.parse((await docker(['image', 'inspect', '--format', '{{json .GraphDriver.Data}}', 'test/thin:1'])).stdout) as Record<string, string>;
    expect(data['CvmfsThinImage']).toBe('true');
    expect(data['CvmfsLayers']).toBe('2');
    expect(data['CvmfsOrigin']).toBe('test/src:1');
    // the way DUCC and docker2cvmfs make thin images: `docker import` of a tar holding thin.json
    await docker(['import', '--change', 'CMD ["/bin/sh"]', '-', 'test/thin-import:1'], { input: await tarOf([{ path: 'thin.json', content: thinText }]) });
    expect(await run('test/thin-import:1', 'cat /data/only-in-cvmfs.txt')).toBe('served from cvmfs\n');
    await docker(['rmi', 'test/thin-import:1']);
  });

  it('traces the start of a container of the thin image, its profile read ahead: cvmfs-thin why-slow by the Docker container ID or a prefix', async () => {
    const id = (await docker(['create', '--network', 'none', 'test/thin:1', 'cat', '/data/only-in-cvmfs.txt'])).stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    expect((await docker(['start', '-a', id])).stdout).toBe('served from cvmfs\n');
    // written when dockerd mounted the container's root, again once the read-ahead it joined ended
    const whySlow = (arg: string, json = true) => runCli(['why-slow', '--state-dir', path.join(dir, 'state'), arg, ...(json ? ['--json'] : [])]);
    let t: Record<string, unknown> = {};
    for (let i = 0; i < 100 && t['prefetch'] === undefined; i++) {
      const r = await whySlow(id.slice(0, 12));
      if (r.code === 0) t = JSON.parse(r.out) as Record<string, unknown>;
      else await sleep(100);
    }
    expect(t).toMatchObject({ container: id, daemon: 'graphdriver', origin: 'test/src:1', layers: 2, profile: 'repository', budgetMs: 60000 });
    expect(t['prefetch']).toMatchObject({ files: 2, missing: 0, failed: 0 });
    expect(Object.keys(t['phases'] as object).sort()).toEqual(['create', 'cvmfs', 'mount', 'resolve']);
    const text = await whySlow(id, false);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(
      new RegExp(`^start of ${id}/[0-9a-f]{64} \\(graphdriver\\) at .*: image test/src:1 \\(layer [0-9a-f]{64}\\), 2 layer\\(s\\)\n {2}container: ${id}\n`),
    );
    expect(text.out).toContain('  access profile: repository\n  prefetch: 2 file(s)');
    await docker(['rm', id]);
  });

  it("a thin image whose profile has a pack and an image: its containers read the profile's files from the hot layer mounted from the image, the same as from CVMFS", async () => {
    // three layers (the second deletes a file of the first, DUCC's way), a profile of the files a start reads, and its pack
    const src = await buildImage('src-hot:1', [
      busyboxEntries('salt-hot'),
      [
        { path: 'app/', type: 'dir' },
        { path: 'app/gone.py', content: 'deleted above\n' },
        { path: 'app/lib/', type: 'dir', mode: 0o750 },
        ...Array.from({ length: 30 }, (_, i) => ({ path: `app/lib/m${i}.py`, content: `module ${i}\n`.repeat(200 + i) })),
      ],
      [
        { path: 'app/', type: 'dir' },
        { path: 'app/.wh.gone.py', content: '' },
        { path: 'app/main.py', content: 'main\n' },
      ],
    ]);
    for (const l of src.layers) unpackDuccStyle(repo, l);
    const hexes = src.layers.map((l) => l.digest.slice(7));
    const files = [
      { path: 'app/main.py', layer: hexes[2], size: 5 },
      { path: 'app/gone.py', layer: hexes[1], size: 14 },
      ...Array.from({ length: 30 }, (_, i) => ({ path: `app/lib/m${i}.py`, layer: hexes[1], size: `module ${i}\n`.length * (200 + i) })),
    ];
    const profile: AccessProfile = { schema: PROFILE_SCHEMA, version: 1, layers: hexes, prefetch: true, created: new Date().toISOString(), files };
    mkdirSync(path.dirname(path.join(repo, profilePath(hexes))), { recursive: true });
    // the pack and the image (the graph driver mounts the image: this kernel mounts EROFS from files)
    const imageOut = { meta: path.join(repo, imagePath(hexes)), data: path.join(repo, imageDataPath(hexes)) };
    const packed = await writeProfilePack(repo, profile, path.join(repo, packPath(hexes)), { host: systemHost, log: silentLogger(), imageOut });
    expect([packed!.pack.files, packed!.image?.files]).toEqual([31, 31]); // the deleted file is not packed
    writeFileSync(path.join(repo, profilePath(hexes)), serializeProfile({ ...profile, pack: packed!.pack, image: packed!.image }));
    const thin = JSON.stringify({
      version: '1.0',
      origin: 'test/src-hot:1',
      layers: hexes.map((h) => ({ digest: h, url: `cvmfs://${REPO}/.layers/${h.slice(0, 2)}/${h}/layerfs` })),
    });
    await writeDockerArchive(path.join(dir, 'thin-hot.tar'), await buildThinImage('test/thin-hot:1', thin));
    await docker(['load', '-i', path.join(dir, 'thin-hot.tar')]);
    const script = 'cat /app/main.py; test -e /app/gone.py && echo gone-present || echo gone-gone; cat /app/lib/* | md5sum; stat -c "%a %u" /app/lib';
    const id = (await docker(['create', '--network', 'none', 'test/thin-hot:1', 'sh', '-c', script])).stdout.trim();
    const out = (await docker(['start', '-a', id])).stdout;
    const hot = readdirSync(path.join(home, 'masks')).filter((f) => f.startsWith('hot-'));
    expect(hot).toHaveLength(1);
    expect(plugin.output()).toMatch(/"how":\["hot"/);
    const trace = await runCli(['why-slow', '--state-dir', path.join(dir, 'state'), id]);
    expect(trace.out).toContain("hot layer (the profile's image, mounted from CVMFS)");
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).toContain(` ${path.join(home, 'masks', hot[0]!)} `);
    await docker(['rm', id]);
    // what the image holds (cat /app/lib/* reads them in name order)
    const libs = Array.from({ length: 30 }, (_, i): [string, string] => [`m${i}.py`, `module ${i}\n`.repeat(200 + i)]).sort(([a], [b]) => (a < b ? -1 : 1));
    const md5 = createHash('md5')
      .update(libs.map(([, c]) => c).join(''))
      .digest('hex');
    const expected = `main\ngone-gone\n${md5}`;
    expect(out).toBe(`${expected}  -\n750 0\n`);
  });

  it('docker diff and commit on a container of the thin image; the committed image runs', async () => {
    await docker(['run', '--name', 'c1', '--network', 'none', 'test/thin:1', 'sh', '-c', 'echo mine > /data/mine.txt; rm /bin/wc; echo x >> /etc/passwd']);
    const diff = (await docker(['diff', 'c1'])).stdout.trim().split('\n');
    // as overlay2: a directory holding only a modified file is not listed (/etc)
    expect(diff).toEqual(['C /bin', 'D /bin/wc', 'C /data', 'A /data/mine.txt', 'C /etc/passwd']);
    await docker(['commit', 'c1', 'test/thin:2']);
    await docker(['rm', 'c1']);
    expect(await run('test/thin:2', 'cat /data/mine.txt /data/only-in-cvmfs.txt; test -e /bin/wc || echo wc-gone; tail -1 /etc/passwd')).toBe(
      'mine\nserved from cvmfs\nwc-gone\nx\n',
    );
    // the committed layer is an ordinary local layer holding only the changes
    const h = JSON.parse((await docker(['image', 'inspect', '--format', '{{json .RootFS.Layers}}', 'test/thin:2'])).stdout) as string[];
    expect(h).toHaveLength(2);
    const size = Number((await docker(['image', 'inspect', '--format', '{{.Size}}', 'test/thin:2'])).stdout.trim());
    expect(size).toBeLessThan(100_000); // busybox (~1 MB) is not copied into it
  });

  it('docker save round-trips the thin image (thin.json) and the committed one', async () => {
    const out = path.join(dir, 'saved');
    mkdirSync(out, { recursive: true });
    await docker(['save', '-o', path.join(out, 'thin2.tar'), 'test/thin:2']);
    const x = path.join(out, 'x');
    mkdirSync(x);
    const { execFileSync } = await import('node:child_process');
    execFileSync('tar', ['-xf', path.join(out, 'thin2.tar'), '-C', x]);
    const manifest = JSON.parse(readFileSync(path.join(x, 'manifest.json'), 'utf8')) as { Layers: string[] }[];
    const layers = manifest[0]!.Layers.map((l) =>
      execFileSync('tar', ['-tf', path.join(x, l)])
        .toString()
        .trim()
        .split('\n')
        .sort(),
    );
    expect(layers[0]).toEqual(['thin.json']);
    expect(layers[1]).toEqual(['bin/', 'bin/.wh.wc', 'data/', 'data/mine.txt', 'etc/', 'etc/passwd']);
    await docker(['rmi', 'test/thin:2', 'test/thin:1']);
    await docker(['load', '-i', path.join(out, 'thin2.tar')]);
    expect(await run('test/thin:2', 'cat /data/mine.txt /data/only-in-cvmfs.txt')).toBe('mine\nserved from cvmfs\n');
    // an ordinary image too
    await docker(['save', '-o', path.join(out, 'plain.tar'), 'test/plain:1']);
    await docker(['rmi', 'test/plain:1']);
    await docker(['load', '-i', path.join(out, 'plain.tar')]);
    expect(await run('test/plain:1', 'cat /etc/added')).toBe('added in layer 2\n');
  });

  it('keeps working when the plugin restarts while dockerd runs (no new Init)', async () => {
    await docker(['run', '-d', '--name', 'long', '--network', 'none', 'test/thin:2', 'sleep', '1000']);
    const before = readMountinfo().filter((m) => m.mountPoint.startsWith(home)).length;
    expect(before).toBeGreaterThan(0);
    expect(await plugin.stop()).toBe(0);
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(home)).length).toBe(before);
    plugin = await startPlugin(name, pluginArgs());
    expect((await docker(['exec', 'long', 'cat', '/data/only-in-cvmfs.txt'])).stdout).toBe('served from cvmfs\n');
    expect(await run('test/thin:2', 'cat /data/mine.txt')).toBe('mine\n');
    expect(await run('test/plain:1', 'cat /etc/added')).toBe('added in layer 2\n');
    await docker(['rm', '-f', 'long']);
    expect(plugin.output()).not.toContain('"msg":"GraphDriver.Init"');
    expect(plugin.output()).toContain('restored the state of the last GraphDriver.Init');
  });

  it('keeps working across a dockerd restart (re-Init); Cleanup leaves no mounts', async () => {
    await docker(['create', '--name', 'kept', '--network', 'none', 'test/thin:2', 'cat', '/data/mine.txt']);
    await dockerd.stop();
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(home))).toEqual([]);
    dockerd = await startDockerd(path.join(dir, 'd'), name);
    expect((await docker(['start', '-a', 'kept'])).stdout).toBe('mine\n');
    await docker(['rm', 'kept']);
    expect(await run('test/thin:2', 'cat /data/only-in-cvmfs.txt')).toBe('served from cvmfs\n');
    expect(await run('test/plain:1', 'cat /etc/added')).toBe('added in layer 2\n');
  });

  it('docker rmi leaves no layer directory, link or mask behind', async () => {
    const ps = (await docker(['ps', '-aq'])).stdout.trim();
    if (ps) await docker(['rm', '-f', ...ps.split('\n')]);
    const imgs = (await docker(['images', '-q'])).stdout.trim().split('\n').filter(Boolean);
    await docker(['rmi', '-f', ...new Set(imgs)]);
    expect(layerDirs(home)).toEqual([]);
    expect(readdirSync(path.join(home, 'l'))).toEqual([]);
    expect(readdirSync(path.join(home, 'masks'))).toEqual([]);
    expect(readdirSync(path.join(home, 'm'))).toEqual([]);
    // the CVMFS tree is as it was
    expect(existsSync(path.join(repo, '.layers'))).toBe(true);
    rmSync(path.join(dir, 'saved'), { recursive: true, force: true });
  });
});
