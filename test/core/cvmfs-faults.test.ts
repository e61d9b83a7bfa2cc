/**
 * A real FUSE client that dies or stalls under the shared stack: a
 * fuse-overlayfs mount stands in for /cvmfs/unpacked.cern.ch
 * (test/helpers/fuse-standin.ts); `kill -9` leaves a real ENOTCONN mount,
 * `kill -STOP` a real stall. The probe helper, then the graph driver's Get
 * (real overlay mounts on the FUSE lowers) and its check of mounted layers;
 * the snapshotter's check of a container whose lowerdir= containerd shortened.
 * The snapshotter daemon: test/snapshotter/cvmfs-faults.test.ts. Needs root
 * and fuse-overlayfs.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { FS_MAGIC, systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MAX_STUCK, ProbeHelper } from '../../src/core/host/probe-child.js';
import { GraphDriver } from '../../src/graphdriver/driver.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { needs, tempDir } from '../helpers/env.js';
import { errnoOf, failureOf, FuseStandin } from '../helpers/fuse-standin.js';
import { mountAll, unmountAll } from '../helpers/mount.js';
import { tarOf } from '../helpers/oci-image.js';

const TIMEOUT_MS = 1000;

async function failure(p: Promise<unknown>): Promise<{ code: string; kind: string; message: string; ms: number }> {
  const { error: e, ms } = await failureOf(p);
  if (!ThinError.is(e)) throw e;
  return { code: e.code, kind: e.kind, message: e.message, ms };
}

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('a real FUSE client that dies or stalls', () => {
  const base = tempDir('cvmfs-faults-');
  let n = 0;
  let dir: string;
  let tree: string;
  let mp: string;
  const fuses: FuseStandin[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    tree = path.join(dir, 'tree');
    mp = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    mkdirSync(tree, { recursive: true });
    mkdirSync(mp, { recursive: true });
  });
  afterEach(async () => {
    // overlays first, then the FUSE processes (continued, killed) and their mounts
    while (cleanups.length) await cleanups.pop()!();
    while (fuses.length) await fuses.pop()!.cleanup();
  });

  async function standin(): Promise<FuseStandin> {
    const f = await FuseStandin.mount(tree, mp);
    fuses.push(f);
    return f;
  }

  it('the probe helper: answers from a live client, ENOTCONN from a killed one; a stopped one strands probes until the helper is replaced', async () => {
    const layer = addLayer(tree, 'a', { f: 'x' });
    const dirIn = layer.dir.replace(tree, mp);
    const fuse = await standin();
    const helper = new ProbeHelper();
    cleanups.push(() => helper.stop());
    const [fs, st, rd] = await helper.run([
      { op: 'statfs', path: mp },
      { op: 'stat', path: dirIn },
      { op: 'readdir', path: dirIn },
    ]);
    expect(fs).toMatchObject({ ok: true, type: FS_MAGIC.FUSE });
    expect(st).toMatchObject({ ok: true, dir: true, uid: 0 });
    expect(rd).toMatchObject({ ok: true, entries: 1 });
    expect(await helper.run([{ op: 'stat', path: `${dirIn}/nope` }])).toMatchObject([{ ok: false, code: 'ENOENT' }]);

    fuse.stop();
    const first = helper.pid;
    const stuck: Promise<unknown>[] = [];
    const ctl = new AbortController();
    for (let i = 0; i < MAX_STUCK; i++) stuck.push(helper.run([{ op: 'statfs', path: mp }], ctl.signal).catch((e: Error) => e.message));
    const local = helper.run([{ op: 'stat', path: dir }]);
    await new Promise((r) => setTimeout(r, 200));
    // a stuck call occupies one of the helper's threads, not the others
    expect(await Promise.race([local, new Promise((r) => setTimeout(() => r('hung'), 2000))])).toMatchObject([{ ok: true, dir: true }]);
    ctl.abort();
    // too many stuck: the helper is killed (the stopped FUSE had not read the requests: they end) and replaced
    expect(await Promise.all(stuck)).toEqual(Array(MAX_STUCK).fill('CVMFS probe helper replaced: the probe never answered'));
    expect(await helper.run([{ op: 'stat', path: dir }])).toMatchObject([{ ok: true }]);
    expect(helper.pid).not.toBe(first);
    expect(helper.started).toBe(2);

    await fuse.kill9();
    expect(await helper.run([{ op: 'statfs', path: mp }])).toMatchObject([{ ok: false, code: 'ENOTCONN' }]);
  });

  it('snapshotter: a container of 150 CVMFS layers (containerd shortens its lowerdir= to relative names) is found on the dead mount', async () => {
    const layers = Array.from({ length: 150 }, (_, i) => addLayer(tree, `l${i}`, { [`f${i}`]: String(i) }, { converter: true }));
    const fuse = await standin();
    const root = path.join(dir, 'sn');
    const sn = await Snapshotter.open({
      root,
      location: cvmfsLocation({ cvmfsRoot: path.join(dir, 'cvmfs') }),
      host: systemHost,
      log: silentLogger(),
      checkIntervalMs: 0,
      cvmfsTimeoutMs: TIMEOUT_MS,
    });
    cleanups.push(() => sn.close());
    const [m0] = await sn.prepare('extract', '', {});
    writeFileSync(path.join(m0!.source, 'thin.json'), thinJson('unpacked.cern.ch', layers));
    await sn.commit('img', 'extract', {});
    const rootfs = path.join(dir, 'rootfs');
    mkdirSync(rootfs);
    mountAll(await sn.prepare('ctr', 'img', {}), rootfs);
    cleanups.push(() => unmountAll(rootfs));
    const line = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .find((l) => l.split(' ')[4] === rootfs)!;
    expect(line).toMatch(/lowerdir=[0-9a-z]+:/); // shortened: relative to <root>/l
    expect(readFileSync(path.join(rootfs, 'f149'), 'utf8')).toBe('149');
    expect(await sn.checkMounts()).toEqual([]);
    await fuse.kill9();
    const [b] = await sn.checkMounts();
    expect(b).toMatchObject({ mountPoint: rootfs, reason: 'not-connected' });
    expect(b!.lowers).toHaveLength(150);
  });

  describe('graph driver Get', () => {
    let gd: GraphDriver;
    let home: string;
    const ID = (c: string) => c.repeat(64);

    beforeEach(async () => {
      home = path.join(dir, 'home');
      gd = await GraphDriver.open({
        stateDir: path.join(dir, 'state'),
        location: cvmfsLocation({ cvmfsRoot: path.join(dir, 'cvmfs') }),
        thinImages: true,
        idmappedLayers: 'off',
        host: systemHost,
        log: silentLogger(),
        cvmfsTimeoutMs: TIMEOUT_MS,
        checkIntervalMs: 0,
      });
      await gd.init({ home, opts: [], uidMaps: [], gidMaps: [] });
      cleanups.push(async () => {
        await gd.cleanup(); // unmounts every layer
        await gd.close();
      });
    });

    /** A thin image layer `img` over `layers`, and a container layer `ctr` on it. */
    async function thinImage(img: string, layers: FakeLayer[]): Promise<void> {
      await gd.create(img, '', false, {});
      await gd.applyDiff(img, '', Readable.from([await tarOf([{ path: 'thin.json', content: thinJson('unpacked.cern.ch', layers) }])]));
    }

    it('a dead client: Get fails at once naming the layer; mounted layers are reported; a new client serves new mounts', async () => {
      const layer = addLayer(tree, 'a', { 'etc/hello': 'hello\n' }, { converter: true });
      let fuse = await standin();
      await thinImage(ID('a'), [layer]);
      await gd.create(ID('1'), ID('a'), true, {});
      await gd.create(ID('2'), ID('a'), true, {});
      await gd.create(ID('3'), ID('a'), true, {});
      const m1 = await gd.get(ID('1'));
      expect(readFileSync(path.join(m1, 'etc/hello'), 'utf8')).toBe('hello\n');
      expect(await gd.checkMounts()).toEqual([]);

      await fuse.kill9();
      expect(errnoOf(() => readFileSync(path.join(m1, 'etc/hello')))).toBe('ENOTCONN');
      const dead = await failure(gd.get(ID('2')));
      expect(dead).toMatchObject({ code: 'CVMFS_THIN_LAYER_UNAVAILABLE', kind: 'unavailable' });
      expect(dead.message).toContain(`of layer ${ID('2')} is not available (its CVMFS client is not connected): the client of ${mp} died`);
      expect(dead.ms).toBeLessThan(500);
      expect((await gd.checkMounts()).map((b) => [b.mountPoint, b.reason])).toEqual([[m1, 'not-connected']]);

      // the admin mounts a new client at the same path: new mounts see it through the same l/ links
      fuse.detach();
      fuse = await standin();
      const m2 = await gd.get(ID('2'));
      expect(readFileSync(path.join(m2, 'etc/hello'), 'utf8')).toBe('hello\n');
      // the old mount keeps its dead lower for good, and is still reported (read through the overlay)
      expect(errnoOf(() => readdirSync(m1))).toBe('ENOTCONN');
      const after = await gd.checkMounts();
      expect(after.map((b) => [b.mountPoint, b.reason])).toEqual([[m1, 'not-connected']]);
      expect(after[0]!.detail).toContain('CVMFS was mounted again since');
      // a Put and Get of the broken layer mounts it again, on the new client
      await gd.put(ID('1'));
      expect(readFileSync(path.join(await gd.get(ID('1')), 'etc/hello'), 'utf8')).toBe('hello\n');
      expect(await gd.checkMounts()).toEqual([]);
    });

    it('a stalled client: Get fails within the deadline, then at once; the process stays responsive; Get works once it answers', async () => {
      const layer = addLayer(tree, 'a', { 'etc/hello': 'hello\n' }, { converter: true });
      const fuse = await standin();
      await thinImage(ID('a'), [layer]);
      for (const c of ['1', '2', '3']) await gd.create(ID(c), ID('a'), true, {});
      const m1 = await gd.get(ID('1'));
      // an ordinary local layer: its Get/Put go through the journal and the thread pool
      await gd.create(ID('b'), '', false, {});
      await gd.applyDiff(ID('b'), '', Readable.from([await tarOf([{ path: 'f', content: 'x' }])]));
      await gd.create(ID('c'), ID('b'), true, {});

      fuse.stop();
      const stalled = gd.get(ID('2'));
      // meanwhile: local layers mount, the thread pool is free (more calls than its 4 threads)
      const t0 = Date.now();
      const mc = await gd.get(ID('c'));
      await Promise.all(Array.from({ length: 16 }, () => fsp.stat(mc)));
      await gd.put(ID('c'));
      expect(Date.now() - t0).toBeLessThan(500);
      const f = await failure(stalled);
      expect(f).toMatchObject({ code: 'CVMFS_THIN_CVMFS_STALLED', kind: 'unavailable' });
      expect(f.message).toMatch(
        new RegExp(`^layer directory ${mp}/\\.layers/.* of layer ${ID('2')}: CVMFS at ${mp} did not answer within 1 s \\(cvmfs-timeout\\)`),
      );
      expect(f.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 20);
      expect(f.ms).toBeLessThan(TIMEOUT_MS + 500);
      const fast = await failure(gd.get(ID('3')));
      expect(fast.code).toBe('CVMFS_THIN_CVMFS_STALLED');
      expect(fast.ms).toBeLessThan(100);
      // the mounted layer is reported as stalled (within the deadline too)
      const t1 = Date.now();
      expect((await gd.checkMounts()).map((b) => [b.mountPoint, b.reason])).toEqual([[m1, 'stalled']]);
      expect(Date.now() - t1).toBeLessThan(TIMEOUT_MS + 500);

      fuse.cont();
      // the stuck probe answers: the next Get goes through
      await new Promise((r) => setTimeout(r, 100));
      expect(readFileSync(path.join(await gd.get(ID('3')), 'etc/hello'), 'utf8')).toBe('hello\n');
      expect(await gd.checkMounts()).toEqual([]);
    });
  });
});
