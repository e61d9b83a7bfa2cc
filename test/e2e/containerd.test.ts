/**
 * End to end with a real containerd 1.6 + runc (Debian) using `cvmfs-thin
 * snapshotter` as its proxy_plugins snapshotter: ordinary images, thin images
 * imported with plain ctr, remote layers through labelpull (CRI-style labels),
 * deletions, restarts, garbage collection.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { layerMarker } from '../../src/core/cvmfs/layout.js';
import { type Containerd, startContainerd } from '../helpers/containerd.js';
import { type Daemon, startDaemon } from '../helpers/daemon.js';
import { needs, tempDir } from '../helpers/env.js';
import { writeTree } from '../helpers/cvmfs-tree.js';
import { buildImage, buildThinImage, busyboxEntries, type BuiltLayer, unpackDuccStyle, writeOciArchive } from '../helpers/oci-image.js';
import { httpGet, scrape } from './metrics-scrape.js';

const REPO = 'unpacked.cern.ch';
const LABELPULL = path.join(process.env['CTDTS_BIN'] ?? '/tmp/ctdts/bin', 'labelpull');
const SN = 'cvmfs-snapshotter';

function markConverterLayer(repoRoot: string, l: { digest: string; diffId: string }) {
  const file = layerMarker(repoRoot, l.digest.slice(7));
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(
    file,
    JSON.stringify({ schema: 'cvmfs-thin/layer', version: 1, digest: l.digest, diff_id: l.diffId, whiteouts: 'overlay', created: new Date().toISOString() }),
  );
}

const thinDoc = (layers: { digest: string }[]) =>
  JSON.stringify({
    version: '1.0',
    origin: 'e2e',
    layers: layers.map((l) => ({ digest: l.digest.slice(7), url: `cvmfs://${REPO}/.layers/${l.digest.slice(7, 9)}/${l.digest.slice(7)}/layerfs` })),
  });

describe.skipIf(needs({ root: true, binaries: ['containerd', 'ctr', 'runc'] }))('containerd end to end', () => {
  const base = tempDir('e2e-ctd-');
  const repoRoot = path.join(base, 'cvmfs', REPO);
  const snRoot = path.join(base, 'sn-root');
  const snSock = path.join(base, 'sn.sock');
  // metrics on a unix socket: a TCP port 0 would not be known to the test
  const metricsSock = path.join(base, 'sn-metrics.sock');
  let sn: Daemon;
  let ctd: Containerd;
  const startSn = async () =>
    (sn = await startDaemon(['--root', snRoot, '--absolute-mountpoint', repoRoot, '--log-level', 'info', '--metrics-address', metricsSock], snSock));

  beforeAll(async () => {
    mkdirSync(repoRoot, { recursive: true });
    await startSn();
    ctd = await startContainerd(path.join(base, 'ctd'), snSock, SN);
  });
  afterAll(async () => {
    await ctd?.stop();
    await sn?.stop();
  });

  const run = (image: string, id: string, ...cmd: string[]) => ctd.ctr(['run', '--rm', '--snapshotter', SN, image, id, ...cmd]);

  it('imports and runs an ordinary image', async () => {
    const img = await buildImage('docker.io/e2e/plain:1', [busyboxEntries('plain'), [{ path: 'layer2.txt', content: 'two\n' }]]);
    const tar = path.join(base, 'plain.tar');
    await writeOciArchive(tar, img);
    await ctd.ctr(['image', 'import', '--snapshotter', SN, tar]);
    expect(await run(img.name, 'plain1', 'cat', '/layer2.txt', '/etc/salt')).toBe('two\nplain\n');
  });

  it('runs a thin image imported with plain ctr: files come from the CVMFS tree, deletions stay deleted', async () => {
    // the image's real layers, unpacked in the repository tree
    const real = await buildImage('docker.io/e2e/real:1', [
      [
        ...busyboxEntries('thin'),
        { path: 'etc/deleted-by-ducc-layer', content: 'x' },
        { path: 'etc/deleted-by-our-layer', content: 'y' },
        { path: 'opt/dir/old', content: 'o' },
      ],
      [
        { path: 'etc/.wh.deleted-by-ducc-layer', content: '' },
        { path: 'only-in-cvmfs.txt', content: 'served by cvmfs\n' },
      ],
    ]);
    const [l1, l2] = real.layers as [BuiltLayer, BuiltLayer];
    unpackDuccStyle(repoRoot, l1);
    markConverterLayer(repoRoot, l1); // no whiteouts in it: valid as a converter layer
    unpackDuccStyle(repoRoot, l2); // DUCC style: .wh. as a plain file
    // a third layer as `cvmfs-thin convert` writes it: overlay whiteout + opaque dir + marker
    const l3 = { digest: `sha256:${'3'.repeat(64)}`, diffId: `sha256:${'4'.repeat(64)}` };
    writeTree(path.join(repoRoot, '.layers', '33', '3'.repeat(64), 'layerfs'), {
      'etc/deleted-by-our-layer': { whiteout: true },
      'opt/dir': { dir: true, opaque: true },
      'opt/dir/new': 'n',
      'top.txt': 'top layer\n',
    });
    markConverterLayer(repoRoot, l3);

    const thin = await buildThinImage('docker.io/e2e/thin:1', thinDoc([l1, l2, l3]));
    const tar = path.join(base, 'thin.tar');
    await writeOciArchive(tar, thin);
    const before = await scrape(metricsSock);
    await ctd.ctr(['image', 'import', '--snapshotter', SN, tar]); // plain ctr: no CRI labels
    const after = await scrape(metricsSock);
    const thinResolved = { daemon: 'snapshotter' };
    expect(after('cvmfs_thin_thin_images_resolved_total', thinResolved) - before('cvmfs_thin_thin_images_resolved_total', thinResolved)).toBe(1);
    expect(after('cvmfs_thin_snapshots', { kind: 'committed', source: 'thin' })).toBe(1);
    const commits = (f: typeof after) => f('cvmfs_thin_requests_total', { daemon: 'snapshotter', method: 'Commit', code: 'OK' });
    expect(commits(after) - commits(before)).toBe(1);
    expect(after('cvmfs_thin_journal_batch_records_count', { store: 'snapshotter' })).toBeGreaterThan(
      before('cvmfs_thin_journal_batch_records_count', { store: 'snapshotter' }),
    );
    const out = await run(
      thin.name,
      'thin1',
      'sh',
      '-c',
      'cat /only-in-cvmfs.txt /top.txt; ls /opt/dir; ls -a /etc; test -e /thin.json && echo THIN-VISIBLE; echo $CVMFS_IMAGE',
    );
    expect(out).toContain('served by cvmfs\ntop layer\nnew\n');
    expect(out).not.toContain('deleted-by-ducc-layer');
    expect(out).not.toContain('deleted-by-our-layer');
    expect(out).not.toContain('.wh.');
    expect(out).not.toContain('THIN-VISIBLE');
    expect(out.trim().endsWith('true')).toBe(true);
  });

  it('refuses a thin image with a bad manifest at import, clearly, and keeps serving', async () => {
    const bad = await buildThinImage(
      'docker.io/e2e/bad:1',
      JSON.stringify({ version: '1.0', layers: [{ digest: 'a'.repeat(64), url: 'cvmfs://evil.example/.layers/aa/x' }] }),
    );
    const tar = path.join(base, 'bad.tar');
    await writeOciArchive(tar, bad);
    const before = await scrape(metricsSock);
    await expect(ctd.ctr(['image', 'import', '--snapshotter', SN, tar])).rejects.toThrow(/layers\[0\]\.url: repository "evil\.example" is not allowed/);
    expect(await sn.client.list()).toBeDefined();
    const after = await scrape(metricsSock);
    const refused = (f: typeof after) => f('cvmfs_thin_requests_total', { daemon: 'snapshotter', method: 'Commit', code: 'INVALID_ARGUMENT' });
    expect(refused(after) - refused(before)).toBeGreaterThanOrEqual(1);
    expect(after('cvmfs_thin_thin_images_resolved_total', { daemon: 'snapshotter' })).toBe(
      before('cvmfs_thin_thin_images_resolved_total', { daemon: 'snapshotter' }),
    );
  });

  it.skipIf(needs({ binaries: [LABELPULL] }))('skips the download of layers present in CVMFS (CRI labels via labelpull), fetches the missing one', async () => {
    const img = await buildImage('docker.io/e2e/remote:1', [
      [...busyboxEntries('remote'), { path: 'etc/gone', content: 'g' }],
      [
        { path: 'etc/.wh.gone', content: '' },
        { path: 'layer2.txt', content: 'two\n' },
      ],
      [{ path: 'layer3.txt', content: 'three\n' }],
    ]);
    unpackDuccStyle(repoRoot, img.layers[0]!);
    unpackDuccStyle(repoRoot, img.layers[1]!);
    const tar = path.join(base, 'remote.tar');
    await writeOciArchive(tar, img);
    const before = await scrape(metricsSock);
    const out = execFileSync(LABELPULL, ['-address', ctd.address, '-namespace', 'e2e', '-snapshotter', SN, '-image', tar, img.name], { encoding: 'utf8' });
    const fetched = out.split('\n').filter((l) => l.startsWith('FETCH'));
    expect(fetched.some((l) => l.includes(img.layers[2]!.digest))).toBe(true);
    expect(fetched.some((l) => l.includes(img.layers[0]!.digest))).toBe(false);
    expect(fetched.some((l) => l.includes(img.layers[1]!.digest))).toBe(false);
    expect(await run(img.name, 'remote1', 'sh', '-c', 'cat /layer2.txt /layer3.txt /etc/salt; ls -a /etc')).toMatch(/^two\nthree\nremote\n/);
    expect(await run(img.name, 'remote2', 'sh', '-c', 'test -e /etc/gone && echo PRESENT; ls -a /etc')).not.toMatch(/PRESENT|\.wh\./);
    const remote = (await sn.client.list()).filter((i) => i.labels['containerd.io/snapshot/remote']);
    expect(remote.length).toBe(2);
    // the metrics tell the same story: two layers served from CVMFS, the missing one fell back to a download
    const after = await scrape(metricsSock);
    const delta = (name: string, labels: Record<string, string>) => after(name, labels) - before(name, labels);
    expect(delta('cvmfs_thin_remote_layers_total', { result: 'served' })).toBe(2);
    expect(delta('cvmfs_thin_remote_layers_total', { result: 'fallback' })).toBe(1);
    expect(delta('cvmfs_thin_requests_total', { daemon: 'snapshotter', method: 'Prepare', code: 'ALREADY_EXISTS' })).toBeGreaterThanOrEqual(2);
    expect(after('cvmfs_thin_snapshots', { kind: 'committed', source: 'remote' })).toBe(2);
  });

  it('keeps a running container working across a snapshotter restart, and starts new ones after it', async () => {
    const img = await buildImage('docker.io/e2e/long:1', [busyboxEntries('long')]);
    const tar = path.join(base, 'long.tar');
    await writeOciArchive(tar, img);
    await ctd.ctr(['image', 'import', '--snapshotter', SN, tar]);
    await ctd.ctr(['run', '-d', '--snapshotter', SN, img.name, 'long1', 'sleep', '600']);
    try {
      await ctd.ctr(['task', 'exec', '--exec-id', 'w1', 'long1', 'sh', '-c', 'echo before > /tmp/state']);
      expect((await httpGet(metricsSock, '/readyz')).status).toBe(200);
      expect(await sn.stop('SIGTERM')).toBe(0);
      expect(existsSync(metricsSock)).toBe(false);
      expect(await ctd.ctr(['task', 'exec', '--exec-id', 'r1', 'long1', 'cat', '/tmp/state', '/etc/salt'])).toBe('before\nlong\n');
      await startSn();
      expect(await ctd.ctr(['task', 'exec', '--exec-id', 'r2', 'long1', 'cat', '/tmp/state'])).toBe('before\n');
      // containerd redials the proxy plugin with gRPC backoff (up to a few seconds): until then it answers Unavailable
      const t0 = Date.now();
      for (;;) {
        try {
          expect(await run(img.name, 'long2', 'cat', '/etc/salt')).toBe('long\n');
          break;
        } catch (e) {
          if (!/unavailable/i.test(String(e)) || Date.now() - t0 > 20_000) throw e;
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    } finally {
      await ctd.ctr(['task', 'kill', '-s', 'SIGKILL', 'long1']).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 500));
      await ctd.ctr(['task', 'rm', '-f', 'long1']).catch(() => undefined);
      await ctd.ctr(['container', 'rm', 'long1']).catch(() => undefined);
    }
  });

  it('lets containerd garbage-collect: image rm removes snapshots and their data, CVMFS untouched', async () => {
    const before = readdirSync(path.join(snRoot, 'snapshots')).length;
    expect(before).toBeGreaterThan(0);
    for (const name of (await ctd.ctr(['image', 'ls', '-q'])).split('\n').filter(Boolean)) await ctd.ctr(['image', 'rm', '--sync', name]);
    expect(await sn.client.list()).toEqual([]);
    expect(readdirSync(path.join(snRoot, 'snapshots'))).toEqual([]);
    expect(readdirSync(path.join(snRoot, 'work'))).toEqual([]);
    expect(readdirSync(path.join(snRoot, 'l'))).toEqual([]);
    expect(existsSync(path.join(repoRoot, '.layers'))).toBe(true);
    expect(readdirSync(path.join(repoRoot, '.layers')).length).toBeGreaterThan(0);
  });
});
