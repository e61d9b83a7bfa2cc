/**
 * The snapshotter's semantics without root: real directories and journal, a
 * recording host instead of the node (test/helpers/recording-host.ts), and the
 * mounts it answers checked as data. Runs as any user; snapshotter.test.ts
 * checks the same paths with real overlay mounts as root.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { systemHost } from '../../src/core/host/host.js';
import { type Metrics, noMetrics } from '../../src/core/telemetry/metrics.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import type { Mount } from '../../src/core/stack/mounts.js';
import { startSnapshotter } from '../../src/snapshotter/server.js';
import { LABEL_LAYER_DIGEST, LABEL_SNAPSHOT_REF, Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const REPO = 'unpacked.cern.ch';

async function kind(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (ThinError.is(e)) return e.kind;
    throw e;
  }
  return 'ok';
}

/** The lowerdir= entries of an overlay mount, resolved through the short links. */
function lowers(ms: Mount[]): string[] {
  const o = ms[0]!.options.find((x) => x.startsWith('lowerdir='));
  return o
    ? o
        .slice('lowerdir='.length)
        .split(':')
        .map((l) => readlinkSync(l))
    : [];
}

describe('snapshotter semantics (unprivileged, recording host)', () => {
  const base = tempDir('sn-sem-');
  let n = 0;
  let dir: string;
  let root: string;
  let repoRoot: string;
  let host: RecordingHost;
  let sn: Snapshotter;
  const open = () => Snapshotter.open({ root, location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }), host, log: silentLogger() });

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    root = path.join(dir, 'root');
    repoRoot = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repoRoot, { recursive: true });
    host = new RecordingHost();
    sn = await open();
  });
  afterEach(async () => {
    await sn.close();
  });

  /** A committed parentless layer whose only file is thin.json = text (written straight into its directory). */
  async function thinImage(name: string, text: string): Promise<void> {
    const [m] = await sn.prepare(`${name}-extract`, '', {});
    expect(m!.type).toBe('bind');
    writeFileSync(path.join(m!.source, 'thin.json'), text);
    await sn.commit(name, `${name}-extract`, {});
  }

  it('answers containerd overlay mounts: bind for a base, overlay with short links above, read-only views', async () => {
    const [b] = await sn.prepare('a', '', {});
    expect(b).toEqual({ type: 'bind', source: path.join(root, 'snapshots', '1'), options: ['rw', 'rbind'] });
    writeFileSync(path.join(b!.source, 'f'), 'x');
    await sn.commit('A', 'a', {});
    const ms = await sn.prepare('c', 'A', {});
    expect(ms[0]!.type).toBe('overlay');
    expect(ms[0]!.options).toEqual(expect.arrayContaining([`upperdir=${path.join(root, 'snapshots', '2')}`, `workdir=${path.join(root, 'work', '2')}`]));
    expect(lowers(ms)).toEqual([path.join(root, 'snapshots', '1')]);
    // the link to a snapshot's directory is made when it first serves as a lower: only A's exists
    expect(readdirSync(path.join(root, 'l'))).toEqual(['1']);
    // a view of one layer is a read-only bind of it
    expect(await sn.view('v', 'A', {})).toEqual([{ type: 'bind', source: path.join(root, 'snapshots', '1'), options: ['ro', 'rbind'] }]);
    expect(await sn.mounts('c')).toEqual(ms);
    // the snapshotter itself mounts nothing: containerd does
    expect(host.ops('mount')).toEqual([]);
  });

  it("keeps containerd's error semantics", async () => {
    await sn.prepare('a', '', {});
    expect(await kind(sn.prepare('a', '', {}))).toBe('already-exists');
    expect(await kind(sn.prepare('b', 'a', {}))).toBe('invalid-argument'); // parent not committed
    expect(await kind(sn.prepare('b', 'nope', {}))).toBe('not-found');
    expect(await kind(sn.commit('A', 'nope', {}))).toBe('not-found');
    await sn.commit('A', 'a', {});
    expect(await kind(sn.mounts('A'))).toBe('failed-precondition');
    await sn.view('v', 'A', {});
    expect(await kind(sn.commit('V', 'v', {}))).toBe('failed-precondition');
    expect(await kind(sn.remove('A'))).toBe('failed-precondition'); // has a child
    expect(await kind(sn.update({ name: 'A', labels: {} }, ['parent']))).toBe('invalid-argument');
    const u = await sn.update({ name: 'A', labels: { x: '1', y: '2' } }, []);
    expect(u.labels).toEqual({ x: '1', y: '2' });
    expect((await sn.update({ name: 'A', labels: { x: '' } }, ['labels.x'])).labels).toEqual({ y: '2' });
    await sn.remove('v');
    await sn.remove('A');
    expect(sn.list(() => true)).toEqual([]);
  });

  it("mounts a thin image's CVMFS layers, with masks built through the host for DUCC whiteouts", async () => {
    const conv = addLayer(repoRoot, 'conv', { 'bin/tool': 'tool', 'etc/shadow': 's' }, { converter: true });
    const ducc = addLayer(repoRoot, 'ducc', { 'etc/.wh.shadow': '', 'opt/.wh..wh..opq': '', 'data/x': 'x' });
    await thinImage('thin', thinJson(REPO, [conv, ducc]));
    const ms = await sn.prepare('ctr', 'thin', {});
    const ls = lowers(ms);
    const masks = readdirSync(path.join(root, 'masks'));
    expect(masks).toHaveLength(1);
    const m = path.join(root, 'masks', masks[0]!);
    // top first: mask above the DUCC layer, the layer, the mask below it, the converter layer
    expect(ls).toEqual([path.join(m, 'above'), ducc.dir, path.join(m, 'below'), conv.dir]);
    // the whiteouts of the masks are device nodes: made through the host seam
    // (built under a temporary name renamed into place)
    const nodes = host.ops('mknod').map((c) => path.relative(path.dirname(m), String(c.args[0])).split(path.sep).slice(1).join('/'));
    expect(nodes.sort()).toEqual(['above/etc/.wh.shadow', 'above/opt/.wh..wh..opq', 'below/etc/shadow']);
    expect(host.ops('lsetxattr').map((c) => c.args[1])).toContain('trusted.overlay.opaque');
    // the thin layer's own directory (thin.json) is never a lower
    expect(ls.some((l) => l.startsWith(path.join(root, 'snapshots')))).toBe(false);
    // layers stacked on top of it are local
    await sn.commit('up', 'ctr', {});
    const upper = ms[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    expect(lowers(await sn.view('v', 'up', {}))).toEqual([upper, ...ls]);
  });

  it('refuses a bad manifest at Commit naming the field and leaves the active snapshot and no links', async () => {
    const conv = addLayer(repoRoot, 'conv', { f: 'x' }, { converter: true });
    const linksBefore = () => readdirSync(path.join(root, 'l')).sort();
    const [m] = await sn.prepare('x', '', {});
    const before = linksBefore();
    const bad = JSON.parse(thinJson(REPO, [conv, { ...conv, hex: 'f'.repeat(64) }])) as unknown;
    writeFileSync(path.join(m!.source, 'thin.json'), JSON.stringify(bad));
    await expect(sn.commit('X', 'x', {})).rejects.toThrow(/layers\[1\]\.url: layer .* does not exist/);
    expect(sn.stat('x').kind).toBe('active');
    expect(linksBefore()).toEqual(before);
  });

  it('a Prepare that fails leaves nothing behind, also when a CVMFS layer went away after the record was possible', async () => {
    const conv = addLayer(repoRoot, 'conv', { f: 'x' }, { converter: true });
    await thinImage('thin', thinJson(REPO, [conv]));
    const snapshots = readdirSync(path.join(root, 'snapshots')).sort();
    const links = readdirSync(path.join(root, 'l')).sort();
    renameSync(conv.dir, `${conv.dir}.gone`);
    expect(await kind(sn.prepare('ctr', 'thin', {}))).toBe('unavailable');
    expect(await kind(() => sn.stat('ctr'))).toBe('not-found');
    expect(readdirSync(path.join(root, 'snapshots')).sort()).toEqual(snapshots);
    expect(readdirSync(path.join(root, 'l')).sort()).toEqual(links);
    renameSync(`${conv.dir}.gone`, conv.dir);
    // a dead CVMFS client (statfs answers ENOTCONN): the same
    host.broken.add(repoRoot);
    await expect(sn.view('v', 'thin', {})).rejects.toThrow(/not available \(its CVMFS client is not connected\)/);
    expect(readdirSync(path.join(root, 'snapshots')).sort()).toEqual(snapshots);
    host.broken.clear();
    expect(await kind(sn.prepare('ctr', 'thin', {}))).toBe('ok');
  });

  it('serves CRI-labelled layers from CVMFS as remote snapshots, and falls back when absent', async () => {
    const conv = addLayer(repoRoot, 'conv', { f: 'x' }, { converter: true });
    const labels = (chain: string, digest: string) => ({ [LABEL_SNAPSHOT_REF]: chain, [LABEL_LAYER_DIGEST]: digest });
    expect(await kind(sn.prepare('k1', '', labels('sha256:c1', conv.digest)))).toBe('already-exists');
    expect(sn.stat('sha256:c1').kind).toBe('committed');
    expect(lowers(await sn.prepare('ctr', 'sha256:c1', {}))).toEqual([conv.dir]);
    expect(await kind(sn.prepare('k2', '', labels('sha256:c2', `sha256:${'e'.repeat(64)}`)))).toBe('ok');
    // two pulls of the same layer at once (two namespaces): one remote snapshot, both told it exists
    const both = await Promise.all(['n1', 'n2'].map((k) => sn.prepare(k, '', labels('sha256:c3', conv.digest)).catch((e: Error) => e.message)));
    expect(both).toEqual([expect.stringContaining('"sha256:c3"'), expect.stringContaining('"sha256:c3"')]);
    expect(sn.list((i) => i.name.startsWith('sha256:c3')).map((i) => i.name)).toEqual(['sha256:c3']);
    expect(await sn.cleanup()).toEqual({ dirs: 0, links: 0, masks: 0 }); // nothing made twice and orphaned
  });

  it('creates and removes siblings on one parent at once (one shared commit), while a Remove of the parent waits for them', async () => {
    await sn.close();
    const batches: number[] = [];
    const metrics: Metrics = { ...noMetrics, enabled: true, observe: (name, _l, v) => void (name === 'journal_batch_records' && batches.push(v)) };
    sn = await Snapshotter.open({
      root,
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }),
      host,
      log: silentLogger(),
      metrics,
    });
    await sn.prepare('base-x', '', {});
    await sn.commit('base', 'base-x', {});
    batches.length = 0;
    const keys = Array.from({ length: 8 }, (_, i) => `c${i}`);
    const prepares = keys.map((k) => sn.prepare(k, 'base', {}));
    // the parent's removal queues behind the creations already running and then sees their children
    const removal = kind(sn.remove('base'));
    await Promise.all(prepares);
    expect(await removal).toBe('failed-precondition');
    // siblings did not wait for each other's durable write: their records went down together
    expect(Math.max(...batches)).toBeGreaterThan(1);
    batches.length = 0;
    await Promise.all(keys.map((k) => sn.remove(k)));
    expect(Math.max(...batches)).toBeGreaterThan(1);
    expect(await kind(sn.remove('base'))).toBe('ok');
    expect(sn.list(() => true)).toEqual([]);
  });

  it('a Prepare whose directory cannot be made while others are in flight leaves nothing behind', async () => {
    const [b] = await sn.prepare('a', '', {});
    await sn.commit('A', 'a', {});
    const next = Number(path.basename(b!.source)) + 2; // the second of the three below
    writeFileSync(path.join(root, 'work', String(next)), 'in the way');
    const r = await Promise.allSettled(['c1', 'c2', 'c3'].map((k) => sn.prepare(k, 'A', {})));
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(await kind(() => sn.stat('c2'))).toBe('not-found');
    await sn.settled();
    expect(readdirSync(path.join(root, 'snapshots'))).not.toContain(String(next));
    expect(await sn.cleanup()).toEqual({ dirs: 0, links: 0, masks: 0 });
  });

  it('Cleanup removes orphans and unused masks, but nothing below a mount point the host reports', async () => {
    const ducc = addLayer(repoRoot, 'ducc', { '.wh.x': '', y: 'y' });
    await thinImage('thin', thinJson(REPO, [ducc]));
    expect(readdirSync(path.join(root, 'masks'))).toHaveLength(1);
    mkdirSync(path.join(root, 'snapshots', '9999', 'fs'), { recursive: true });
    mkdirSync(path.join(root, 'snapshots', '9998', 'fs'), { recursive: true });
    host.mount(repoRoot, path.join(root, 'snapshots', '9998', 'fs'), null, 4096 /* MS_BIND */, null);
    writeFileSync(path.join(root, 'l', 'zzz'), '');
    const r = await sn.cleanup();
    expect(r).toEqual({ dirs: 1, links: 1, masks: 0 });
    expect(existsSync(path.join(root, 'snapshots', '9998'))).toBe(true);
    await sn.remove('thin');
    expect(await sn.cleanup()).toMatchObject({ masks: 1 });
    expect(readdirSync(path.join(root, 'masks'))).toEqual([]);
    // the facts of the removed masks are forgotten: the layer is scanned and masked again
    await thinImage('thin2', thinJson(REPO, [ducc]));
    expect(readdirSync(path.join(root, 'masks'))).toHaveLength(1);
    await sn.settled(); // the facts file is written behind
    expect(JSON.parse(readFileSync(path.join(root, 'metadata', 'layer-facts.json'), 'utf8'))).toMatchObject({ [ducc.dir]: { mode: 'masked' } });
  });

  it('keeps everything across a restart and recreates lost short links; new ids never reuse old ones', async () => {
    const conv = addLayer(repoRoot, 'conv', { f: 'x' }, { converter: true });
    await thinImage('thin', thinJson(REPO, [conv]));
    await sn.prepare('ctr', 'thin', { k: 'v' });
    const [locDir] = await sn.prepare('loc-x', '', {});
    await sn.commit('loc', 'loc-x', {});
    const locMounts = await sn.prepare('child', 'loc', {});
    const before = sn.list(() => true);
    const ms = await sn.mounts('ctr');
    await sn.close();
    for (const l of readdirSync(path.join(root, 'l'))) rmSync(path.join(root, 'l', l));
    sn = await open();
    expect(sn.list(() => true)).toEqual(before);
    expect(await sn.mounts('ctr')).toEqual(ms);
    expect(lowers(ms)).toEqual([conv.dir]);
    // a local snapshot's own link comes back when it is next used as a lower
    expect(await sn.mounts('child')).toEqual(locMounts);
    expect(lowers(locMounts)).toEqual([locDir!.source]);
    const [m] = await sn.prepare('new', '', {});
    expect(Number(path.basename(m!.source))).toBeGreaterThan(
      Math.max(
        ...readdirSync(path.join(root, 'snapshots'))
          .filter((d) => d !== path.basename(m!.source))
          .map(Number),
      ),
    );
  });

  it('refuses requests after close', async () => {
    await sn.close();
    expect(await kind(sn.prepare('a', '', {}))).toBe('unavailable');
    expect(await kind(() => sn.list(() => true))).toBe('unavailable');
  });
});

describe('one snapshotter per root (flock, unprivileged)', () => {
  const base = tempDir('sn-lock-');

  it('refuses a second snapshotter on the same root, naming the holder, and changes nothing there', async () => {
    const root = path.join(base, 'root');
    const location = cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(base, 'cvmfs') });
    const o = { root, location, host: systemHost, log: silentLogger() };
    const a = await Snapshotter.open({ ...o, address: '/run/first.sock' });
    await a.prepare('x', '', {});
    const listing = () => readdirSync(root, { recursive: true }).map(String).sort();
    const before = listing();
    const e = await Snapshotter.open({ ...o, address: '/run/second.sock' }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(ThinError.is(e) && e.code).toBe('CVMFS_THIN_ROOT_LOCKED');
    expect((e as Error).message).toContain(`${root} is in use by cvmfs-thin snapshotter (pid ${process.pid}, /run/first.sock`);
    expect(listing()).toEqual(before);
    expect(a.stat('x').kind).toBe('active');
    await a.close();
    const b = await Snapshotter.open(o);
    expect(b.stat('x').kind).toBe('active');
    await b.close();
  });

  it('the daemon: a second one on another socket refuses to start, and the first keeps serving', async () => {
    const root = path.join(base, 'droot');
    const o = {
      root,
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(base, 'cvmfs') }),
      thinImages: true,
      remoteLayers: true,
      log: silentLogger(),
    };
    const first = await startSnapshotter({ ...o, address: path.join(base, 'a.sock') });
    try {
      await expect(startSnapshotter({ ...o, address: path.join(base, 'b.sock') })).rejects.toThrow(/is in use by cvmfs-thin snapshotter .*a\.sock/);
      expect(existsSync(path.join(base, 'b.sock'))).toBe(false);
      expect(existsSync(path.join(base, 'a.sock'))).toBe(true);
      await first.snapshotter.prepare('still', '', {});
    } finally {
      await first.stop();
    }
  });
});
