/**
 * The graph driver's semantics without root: the driver in-process over real
 * directories, with a recording host (test/helpers/recording-host.ts) that
 * keeps a simulated mount table instead of mounting. Runs as any user;
 * plugin.test.ts and dockerd.test.ts check the same with real mounts as root.
 */
import { cpSync, existsSync, mkdirSync, readdirSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { type OverlayMount, systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { GraphDriver } from '../../src/graphdriver/driver.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { tarOf, type TarEntry } from '../helpers/oci-image.js';
import { RecordingHost } from '../helpers/recording-host.js';

const ID = (n: number) => n.toString(16).padStart(64, '0');

async function kind(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (ThinError.is(e)) return e.kind;
    throw e;
  }
  return 'ok';
}

describe('graph driver semantics (unprivileged, recording host)', () => {
  const base = tempDir('gd-sem-');
  let n = 0;
  let dir: string;
  let home: string;
  let repo: string;
  let host: RecordingHost;
  let gd: GraphDriver;
  const open = () =>
    GraphDriver.open({
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'auto',
      host,
      log: silentLogger(),
    });
  const apply = async (id: string, entries: TarEntry[]) => gd.applyDiff(id, '', Readable.from([await tarOf(entries)]));
  const overlays = () => host.ops('mountOverlay').map((c) => c.args[0] as Required<OverlayMount>);
  const merged = (id: string) => path.join(home, 'layers', id, 'merged');

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    home = path.join(dir, 'home');
    repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    mkdirSync(repo, { recursive: true });
    host = new RecordingHost();
    gd = await open();
    await gd.init({ home, opts: [], uidMaps: [], gidMaps: [] });
  });
  afterEach(async () => {
    await gd.close();
  });

  it('mounts a layer with lowers once on Get through the host (no chdir), counts references, unmounts on the last Put', async () => {
    await gd.create(ID(1), '', false, {});
    await apply(ID(1), [{ path: 'f', content: 'x' }]);
    // nothing below: the diff dir itself, no mount, no count
    expect(await gd.get(ID(1))).toBe(path.join(home, 'layers', ID(1), 'diff'));
    await gd.create(ID(2), ID(1), true, {});
    const cwd = process.cwd();
    expect(await gd.get(ID(2))).toBe(merged(ID(2)));
    expect(process.cwd()).toBe(cwd);
    const [m] = overlays();
    expect(m).toMatchObject({ target: merged(ID(2)), upper: path.join(home, 'layers', ID(2), 'diff'), work: path.join(home, 'layers', ID(2), 'work') });
    expect(m!.lowers.map((l) => path.resolve(path.dirname(l), readlinkSync(l)))).toEqual([path.join(home, 'layers', ID(1), 'diff')]);
    expect(await gd.get(ID(2))).toBe(merged(ID(2)));
    expect(overlays()).toHaveLength(1);
    await gd.put(ID(2));
    expect(host.mountedAt(merged(ID(2)))).toBeDefined();
    await gd.put(ID(2));
    expect(host.mountedAt(merged(ID(2)))).toBeUndefined();
    expect(host.ops('umount').map((c) => c.args[0])).toEqual([merged(ID(2))]);
  });

  it("mounts a thin image's CVMFS layers below the layers above it, never its own thin.json", async () => {
    const l1 = addLayer(repo, 'base', { 'bin/tool': 'x' }, { converter: true });
    const l2 = addLayer(repo, 'ducc', { 'etc/.wh.gone': '', 'data/f': 'y' });
    await gd.create(ID(3), '', false, {});
    await apply(ID(3), [{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l1, l2]) }]);
    await gd.create(`${ID(4)}-init`, ID(3), true, {});
    await gd.create(ID(4), `${ID(4)}-init`, true, {});
    await gd.get(ID(4));
    const [m] = overlays();
    const real = m!.lowers.map((l) => readlinkSync(l));
    const masks = path.join(home, 'masks', readdirSync(path.join(home, 'masks'))[0]!);
    expect(real).toEqual([`../layers/${ID(4)}-init/diff`, path.join(masks, 'above'), l2.dir, path.join(masks, 'below'), l1.dir]);
    expect(host.ops('mknod').length).toBe(2); // the DUCC whiteout in both masks
    expect(gd.getMetadata(ID(4))['LowerDir']).toBe(
      [path.join(home, 'layers', `${ID(4)}-init`, 'diff'), path.join(masks, 'above'), l2.dir, path.join(masks, 'below'), l1.dir].join(':'),
    );
  });

  it('answers Unavailable rather than mounting when a CVMFS layer is gone, and an InternalError naming the layer when the mount fails', async () => {
    const l1 = addLayer(repo, 'base', { f: 'x' }, { converter: true });
    await gd.create(ID(3), '', false, {});
    await apply(ID(3), [{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l1]) }]);
    await gd.create(ID(4), ID(3), true, {});
    renameSync(l1.dir, `${l1.dir}.gone`);
    expect(await kind(gd.get(ID(4)))).toBe('unavailable');
    renameSync(`${l1.dir}.gone`, l1.dir);
    // a CVMFS client that died: statfs answers ENOTCONN
    host.broken.add(repo);
    await expect(gd.get(ID(4))).rejects.toThrow(/not available \(its CVMFS client is not connected\)/);
    host.broken.clear();
    host.failNext.set('mountOverlay', 'EINVAL');
    await expect(gd.get(ID(4))).rejects.toThrow(new RegExp(`cannot mount overlay for layer ${ID(4)} \\(1 lower layers\\)`));
    expect(await gd.get(ID(4))).toBe(merged(ID(4)));
  });

  it('removes children first, unmounts a mounted layer, and collects unused masks and links', async () => {
    const l2 = addLayer(repo, 'ducc', { '.wh.gone': '', f: 'y' });
    await gd.create(ID(3), '', false, {});
    await apply(ID(3), [{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l2]) }]);
    await gd.create(ID(4), ID(3), true, {});
    await gd.get(ID(4));
    expect(await kind(gd.remove(ID(3)))).toBe('failed-precondition');
    await gd.remove(ID(4));
    expect(host.mountedAt(merged(ID(4)))).toBeUndefined();
    expect(readdirSync(path.join(home, 'masks'))).toHaveLength(1);
    await gd.remove(ID(3));
    await gd.remove(ID(3)); // idempotent
    expect(readdirSync(path.join(home, 'masks'))).toEqual([]);
    expect(readdirSync(path.join(home, 'l'))).toEqual([]);
    expect(readdirSync(path.join(home, 'layers'))).toEqual([]);
  });

  it('restores after a plugin restart: reference counts kept, a lost mount put back; Cleanup unmounts all', async () => {
    await gd.create(ID(1), '', false, {});
    await gd.create(ID(2), ID(1), true, {});
    await gd.get(ID(2));
    await gd.close();
    host = new RecordingHost(); // the mount did not survive
    gd = await open();
    expect(overlays().map((m) => m.target)).toEqual([merged(ID(2))]);
    await gd.get(ID(2));
    await gd.put(ID(2));
    expect(host.mountedAt(merged(ID(2)))).toBeDefined(); // two Gets, one Put
    await gd.cleanup();
    expect(host.mountedAt(merged(ID(2)))).toBeUndefined();
  });

  it('answers Changes and DiffSize of a container layer against its lowers (opaque dirs read through the host)', async () => {
    await gd.create(ID(1), '', false, {});
    await apply(ID(1), [
      { path: 'etc/', type: 'dir' },
      { path: 'etc/a', content: 'a' },
      { path: 'etc/b', content: 'b' },
      { path: 'opt/', type: 'dir' },
      { path: 'opt/x', content: 'x' },
    ]);
    await gd.create(ID(2), ID(1), true, {});
    const diff = path.join(home, 'layers', ID(2), 'diff');
    mkdirSync(path.join(diff, 'etc'));
    writeFileSync(path.join(diff, 'etc', 'new'), 'new!');
    mkdirSync(path.join(diff, 'opt'));
    host.lsetxattr(path.join(diff, 'opt'), 'trusted.overlay.opaque', 'y');
    const ch = await gd.changes(ID(2), ID(1));
    // as moby's overlay driver: an opaque directory in the upper layer counts as deleted (the xattr
    // exists only in the recording host: read through the seam, or /opt would show as modified)
    expect(ch).toEqual([
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/new', Kind: 1 },
      { Path: '/opt', Kind: 2 },
    ]);
    expect(await gd.diffSize(ID(2), ID(1))).toBe(4);
    // against "" (not its own parent): the view Get shows, every path in it as added; the recording host
    // does not mount, so the merged dir stands for the view: ID(1)'s files, ID(2)'s new one, /opt emptied
    cpSync(path.join(home, 'layers', ID(1), 'diff'), merged(ID(2)), { recursive: true });
    writeFileSync(path.join(merged(ID(2)), 'etc', 'new'), 'new!');
    rmSync(path.join(merged(ID(2)), 'opt', 'x'));
    expect(await gd.changes(ID(2), '')).toEqual(['/etc', '/etc/a', '/etc/b', '/etc/new', '/opt'].map((p) => ({ Path: p, Kind: 1 })));
    expect(await gd.diffSize(ID(2), '')).toBe(1 + 1 + 4);
    expect(host.mountedAt(merged(ID(2)))).toBeUndefined(); // mounted for the answer, put back
    expect(host.ops('umount').map((c) => c.args[0])).toEqual([merged(ID(2)), merged(ID(2))]);
  });

  it('close() waits for a streaming Diff, and every endpoint refuses after it', async () => {
    await gd.create(ID(1), '', false, {});
    await apply(ID(1), [{ path: 'f', content: 'x'.repeat(100_000) }]);
    const tar = await gd.diff(ID(1), '');
    let closed = false;
    const closing = gd.close().then(() => (closed = true));
    await new Promise((r) => setImmediate(r));
    expect(closed).toBe(false);
    let bytes = 0;
    for await (const c of tar) bytes += (c as Buffer).length;
    await closing;
    expect(closed).toBe(true);
    expect(bytes).toBeGreaterThan(100_000);
    for (const call of [gd.remove(ID(1)), gd.diff(ID(1), ''), gd.changes(ID(1), ''), gd.diffSize(ID(1), ''), gd.get(ID(1))])
      expect(await kind(call)).toBe('unavailable');
  });

  it('Remove, Changes and DiffSize take the layer lock: a Remove waits for a running ApplyDiff', async () => {
    await gd.create(ID(1), '', false, {});
    const body = new Readable({ read() {} });
    const applying = gd.applyDiff(ID(1), '', body);
    const removing = gd.remove(ID(1));
    await new Promise((r) => setImmediate(r));
    expect(existsSync(path.join(home, 'layers', ID(1)))).toBe(true);
    body.push(await tarOf([{ path: 'f', content: 'x' }]));
    body.push(null);
    expect(await applying).toBe(1);
    await removing;
    expect(gd.exists(ID(1))).toBe(false);
  });
});

describe('one graph driver per state directory and per Home (flock, unprivileged)', () => {
  const base = tempDir('gd-lock-');
  const cfg = (stateDir: string, socket: string) => ({
    stateDir,
    location: cvmfsLocation({ absoluteMountpoint: path.join(base, 'cvmfs') }),
    thinImages: true,
    idmappedLayers: 'auto' as const,
    host: systemHost,
    socket,
    log: silentLogger(),
  });

  it('refuses a second driver on the same state directory, and a second Init of a Home another driver holds', async () => {
    const home = path.join(base, 'home');
    const a = await GraphDriver.open(cfg(path.join(base, 'state'), '/run/docker/plugins/a.sock'));
    await a.init({ home, opts: [], uidMaps: [], gidMaps: [] });
    await a.create(ID(1), '', false, {});
    await expect(GraphDriver.open(cfg(path.join(base, 'state'), '/run/docker/plugins/b.sock'))).rejects.toThrow(
      /state is in use by cvmfs-thin graphdriver \(pid \d+, \/run\/docker\/plugins\/a\.sock/,
    );
    const b = await GraphDriver.open(cfg(path.join(base, 'state2'), '/run/docker/plugins/b.sock'));
    expect(await kind(b.init({ home, opts: [], uidMaps: [], gidMaps: [] }))).toBe('failed-precondition');
    expect(b.home).toBeUndefined();
    // the holder is unaffected; a re-Init of its own Home (dockerd restart) keeps its lock
    await a.init({ home, opts: [], uidMaps: [], gidMaps: [] });
    expect(a.exists(ID(1))).toBe(true);
    await a.close();
    await b.init({ home, opts: [], uidMaps: [], gidMaps: [] });
    expect(b.exists(ID(1))).toBe(true);
    await b.close();
  });
});
