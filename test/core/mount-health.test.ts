/**
 * Running containers on a dead or stalled CVMFS lower (core/stack/mount-health.ts)
 * through the recording host: the overlay options as the kernel shows them,
 * which overlays are ours, what is reported and how (gauge, one warning per
 * overlay naming the snapshot or layer), for the snapshotter and the graph
 * driver. test/core/cvmfs-faults.test.ts checks the same with a real FUSE
 * file system killed under a real overlay.
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import type { Metrics } from '../../src/core/telemetry/metrics.js';
import { brokenOverlays, MountMonitor, overlaysOf, parseOverlayOptions } from '../../src/core/stack/mount-health.js';
import { CvmfsProbe } from '../../src/core/host/probe.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { GraphDriver } from '../../src/graphdriver/driver.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { tarOf } from '../helpers/oci-image.js';
import { RecordingHost, type SimMount } from '../helpers/recording-host.js';

const base = tempDir('mount-health-');
let n = 0;

function overlay(mountPoint: string, superOptions: string): SimMount {
  return { mountPoint, root: '/', fsType: 'overlay', source: 'overlay', options: 'rw', readonly: false, propagation: 'private', superOptions };
}

/** A Metrics that keeps the last value of each gauge and counter. */
function recorder(): Metrics & { values: Map<string, number> } {
  const values = new Map<string, number>();
  const key = (n: string, l: object) => `${n}${JSON.stringify(l)}`;
  return {
    enabled: true,
    values,
    inc: (n, l, by = 1) => void values.set(key(n, l), (values.get(key(n, l)) ?? 0) + by),
    set: (n, l, v) => void values.set(key(n, l), v),
    observe: () => undefined,
    onCollect: () => undefined,
  };
}

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines, warnings: () => lines.filter((l) => l['level'] === 40 && String(l['msg']).includes('running container')) };
}

describe('overlay options and our overlays', () => {
  it('parses lowerdir= (with escaped colons and octal escapes) and lowerdir+= as the kernel shows them', () => {
    expect(parseOverlayOptions('rw,lowerdir=l/1:l/2,upperdir=snapshots/5,workdir=work/5,index=off')).toEqual({
      lowers: ['l/1', 'l/2'],
      upper: 'snapshots/5',
      work: 'work/5',
    });
    expect(parseOverlayOptions('rw,lowerdir+=/s/l/1,lowerdir+=/s/l/2,upperdir=/s/u,workdir=/s/w,uuid=on')).toEqual({
      lowers: ['/s/l/1', '/s/l/2'],
      upper: '/s/u',
      work: '/s/w',
    });
    expect(parseOverlayOptions('ro,lowerdir=/a\\:b:/c\\054d')).toEqual({ lowers: ['/a:b', '/c,d'], upper: undefined, work: undefined });
  });

  it('finds the overlays whose lowers go through our l/ (or m/) links, absolute or relative (ours only), and tells CVMFS lowers from ours and masks', () => {
    const root = path.join(base, `r${n++}`);
    mkdirSync(path.join(root, 'l'), { recursive: true });
    symlinkSync('/cvmfs/unpacked.cern.ch/.layers/ab/abc/layerfs', path.join(root, 'l', '1'));
    symlinkSync(path.join(root, 'snapshots', '5'), path.join(root, 'l', '2'));
    symlinkSync(path.join(root, 'masks', 'xyz', 'above'), path.join(root, 'l', '3'));
    symlinkSync('../layers/abc/diff', path.join(root, 'l', '4'));
    const mounts = [
      overlay('/run/a/rootfs', `rw,lowerdir=${root}/l/3:${root}/l/1:${root}/l/2,upperdir=${root}/snapshots/7,workdir=${root}/work/7`),
      overlay('/run/b/rootfs', 'rw,lowerdir=l/1:l/4,upperdir=snapshots/8,workdir=work/8'),
      overlay('/run/c/rootfs', `rw,lowerdir+=${root}/m/1,upperdir=/elsewhere/u,workdir=/elsewhere/w`),
      overlay('/var/lib/docker/overlay2/x/merged', 'rw,lowerdir=/var/lib/docker/overlay2/l/ABC,upperdir=/u,workdir=/w'),
      // containerd shortened a long lowerdir= relative to <root>/l; the upper dir stays absolute
      overlay('/run/d/rootfs', `rw,upperdir=${root}/snapshots/9,workdir=${root}/work/9,lowerdir=1:4`),
      // relative lowers of somebody else's overlay are not taken for ours
      overlay('/run/e/rootfs', 'rw,upperdir=/other/snapshots/9,workdir=/other/work/9,lowerdir=1:4'),
      { ...overlay('/cvmfs/unpacked.cern.ch', ''), fsType: 'fuse', superOptions: 'rw' },
    ];
    const got = overlaysOf(mounts, root);
    const cvmfs = '/cvmfs/unpacked.cern.ch/.layers/ab/abc/layerfs';
    expect(got).toEqual([
      {
        mountPoint: '/run/a/rootfs',
        upper: `${root}/snapshots/7`,
        lowers: [
          { link: `${root}/l/3`, target: `${root}/masks/xyz/above`, cvmfs: false },
          { link: `${root}/l/1`, target: cvmfs, cvmfs: true },
          { link: `${root}/l/2`, target: `${root}/snapshots/5`, cvmfs: false },
        ],
      },
      {
        mountPoint: '/run/b/rootfs',
        upper: `${root}/snapshots/8`,
        lowers: [
          { link: `${root}/l/1`, target: cvmfs, cvmfs: true },
          { link: `${root}/l/4`, target: `${root}/layers/abc/diff`, cvmfs: false },
        ],
      },
      { mountPoint: '/run/c/rootfs', upper: undefined, lowers: [{ link: `${root}/l/1`, target: cvmfs, cvmfs: true }] },
      {
        mountPoint: '/run/d/rootfs',
        upper: `${root}/snapshots/9`,
        lowers: [
          { link: `${root}/l/1`, target: cvmfs, cvmfs: true },
          { link: `${root}/l/4`, target: `${root}/layers/abc/diff`, cvmfs: false },
        ],
      },
    ]);
  });
});

describe('brokenOverlays and MountMonitor (recording host)', () => {
  it('reports overlays on a dead mount, on a mount that died and was replaced, and on a stalled one; not the healthy ones', async () => {
    const dir = path.join(base, `b${n++}`);
    const root = path.join(dir, 'root');
    const repos = ['dead', 'fine', 'slow'].map((r) => path.join(dir, 'cvmfs', `${r}.cern.ch`));
    const layers = repos.map((r) => addLayer(r, 'x', { f: 'x' }));
    mkdirSync(path.join(root, 'l'), { recursive: true });
    layers.forEach((l, i) => symlinkSync(l.dir, path.join(root, 'l', String(i + 1))));
    const mps = ['a', 'b', 'c', 'd'].map((m) => path.join(dir, 'ctr', m));
    for (const mp of mps) mkdirSync(mp, { recursive: true });
    const host = new RecordingHost();
    host.mounts.push(
      overlay(mps[0]!, `rw,lowerdir=${root}/l/1:${root}/l/2,upperdir=${root}/snapshots/1,workdir=${root}/work/1`),
      overlay(mps[1]!, `rw,lowerdir=${root}/l/2,upperdir=${root}/snapshots/2,workdir=${root}/work/2`),
      overlay(mps[2]!, `rw,lowerdir=${root}/l/2,upperdir=${root}/snapshots/3,workdir=${root}/work/3`),
      overlay(mps[3]!, `rw,lowerdir=${root}/l/3,upperdir=${root}/snapshots/4,workdir=${root}/work/4`),
    );
    host.broken.add(repos[0]!);
    host.broken.add(mps[1]!); // its repository answers (remounted), the overlay does not
    host.stalled.add(repos[2]!);
    const probe = new CvmfsProbe({ host, log: silentLogger(), timeoutMs: 300 });
    const broken = await brokenOverlays(probe, overlaysOf(host.mountinfo(), root));
    expect(broken.map((b) => [b.mountPoint, b.reason, b.cvmfs])).toEqual([
      [mps[0], 'not-connected', [repos[0], repos[1]]],
      [mps[1], 'not-connected', [repos[1]]],
      [mps[3], 'stalled', [repos[2]]],
    ]);
    expect(broken[0]!.detail).toContain('ENOTCONN (Transport endpoint is not connected: its CVMFS client died)');
    expect(broken[1]!.detail).toContain('CVMFS was mounted again since; only new containers see the new mount');
    // each repository asked once, the healthy overlays read through once each
    expect(
      host
        .ops('probeFs')
        .map((c) => c.args)
        .flat()
        .sort(),
    ).toEqual([...repos.map((r) => `statfs ${r}`), `readdir ${mps[1]}`, `readdir ${mps[2]}`].sort());
    host.unstall();
  });

  it('MountMonitor: sets the gauge on each check, warns once per overlay naming it, says when it is gone', async () => {
    const dir = path.join(base, `m${n++}`);
    const root = path.join(dir, 'root');
    const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    const l = addLayer(repo, 'x', { f: 'x' });
    mkdirSync(path.join(root, 'l'), { recursive: true });
    symlinkSync(l.dir, path.join(root, 'l', '1'));
    const mp = path.join(dir, 'ctr');
    mkdirSync(mp);
    const host = new RecordingHost();
    host.mounts.push(overlay(mp, `rw,lowerdir=${root}/l/1,upperdir=${root}/snapshots/1,workdir=${root}/work/1`));
    const metrics = recorder();
    const { log, lines, warnings } = capture();
    const m = new MountMonitor({
      daemon: 'snapshotter',
      root,
      host,
      probe: new CvmfsProbe({ host, log, timeoutMs: 300 }),
      log,
      metrics,
      intervalMs: 0,
      describe: () => ({ snapshot: 'ctr-key' }),
    });
    const gauge = (reason: string) => metrics.values.get(`broken_mounts${JSON.stringify({ daemon: 'snapshotter', reason })}`);
    expect(await m.check()).toEqual([]);
    expect([gauge('not-connected'), gauge('stalled')]).toEqual([0, 0]);
    host.broken.add(repo);
    expect((await m.check()).map((b) => b.mountPoint)).toEqual([mp]);
    await m.check();
    expect([gauge('not-connected'), gauge('stalled')]).toEqual([1, 0]);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ mountPoint: mp, snapshot: 'ctr-key', reason: 'not-connected', cvmfs: [repo] });
    expect(String(warnings()[0]!['msg'])).toContain('restart the container');
    // the container was restarted: the overlay is gone
    host.mounts.pop();
    expect(await m.check()).toEqual([]);
    expect(gauge('not-connected')).toBe(0);
    expect(lines.some((x) => x['mountPoint'] === mp && String(x['msg']).includes('is gone or answers again'))).toBe(true);
  });
});

describe('the daemons report their containers', () => {
  const dirs: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    while (dirs.length) await dirs.pop()!.close();
  });

  it('snapshotter: an overlay containerd mounted from a Prepare is named by its snapshot key', async () => {
    const dir = path.join(base, `s${n++}`);
    const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    mkdirSync(repo, { recursive: true });
    const host = new RecordingHost();
    const { log, warnings } = capture();
    const sn = await Snapshotter.open({
      root: path.join(dir, 'root'),
      location: cvmfsLocation({ cvmfsRoot: path.join(dir, 'cvmfs') }),
      host,
      log,
      checkIntervalMs: 0,
      cvmfsTimeoutMs: 300,
    });
    dirs.push(sn);
    const l = addLayer(repo, 'x', { f: 'x' }, { converter: true });
    const [m0] = await sn.prepare('extract', '', {});
    writeFileSync(path.join(m0!.source, 'thin.json'), thinJson('unpacked.cern.ch', [l]));
    await sn.commit('thin', 'extract', {});
    const [m] = await sn.prepare('my-container', 'thin', {});
    const rootfs = path.join(dir, 'rootfs');
    mkdirSync(rootfs);
    host.mounts.push(overlay(rootfs, m!.options.join(',')));
    expect(await sn.checkMounts()).toEqual([]);
    host.broken.add(repo);
    const [b] = await sn.checkMounts();
    expect(b).toMatchObject({ mountPoint: rootfs, reason: 'not-connected' });
    expect(warnings()[0]).toMatchObject({ mountPoint: rootfs, snapshot: 'my-container' });
  });

  it('graph driver: a mounted layer is named by its layer ID', async () => {
    const dir = path.join(base, `g${n++}`);
    const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    mkdirSync(repo, { recursive: true });
    const host = new RecordingHost();
    const { log, warnings } = capture();
    const gd = await GraphDriver.open({
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'auto',
      host,
      log,
      checkIntervalMs: 0,
      cvmfsTimeoutMs: 300,
    });
    dirs.push(gd);
    const home = path.join(dir, 'home');
    await gd.init({ home, opts: [], uidMaps: [], gidMaps: [] });
    const l = addLayer(repo, 'x', { f: 'x' }, { converter: true });
    const id = (c: string) => c.repeat(64);
    await gd.create(id('a'), '', false, {});
    await gd.applyDiff(id('a'), '', Readable.from([await tarOf([{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l]) }])]));
    await gd.create(id('b'), id('a'), true, {});
    const merged = await gd.get(id('b'));
    host.broken.add(repo);
    expect((await gd.checkMounts()).map((b) => [b.mountPoint, b.reason])).toEqual([[merged, 'not-connected']]);
    expect(warnings()[0]).toMatchObject({ mountPoint: merged, layer: id('b') });
    host.broken.clear();
    // a stalled CVMFS: Get fails within the deadline instead of mounting
    await gd.put(id('b'));
    host.stalled.add(repo);
    const t0 = Date.now();
    await expect(gd.get(id('b'))).rejects.toMatchObject({ code: 'CVMFS_THIN_CVMFS_STALLED' });
    expect(Date.now() - t0).toBeLessThan(1000);
    host.unstall();
  });
});
