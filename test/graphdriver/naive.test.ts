/**
 * Diff / Changes / DiffSize / ApplyDiff against a parent other than the
 * layer's own (naive diffs, src/graphdriver/naive.ts), without root: the
 * driver in-process with the recording host, which keeps a simulated mount
 * table, so a layer's merged dir stands for its mounted view and the test
 * fills it with what overlay would show. The same against real mounts and
 * moby's own archive package: test/graphtest (NaiveDiffOtherParent) and
 * plugin.test.ts.
 */
import { chmodSync, cpSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { GraphDriver } from '../../src/graphdriver/driver.js';
import { naiveChanges, naiveChangesSize } from '../../src/graphdriver/naive.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { tarOf, type TarEntry } from '../helpers/oci-image.js';
import { RecordingHost } from '../helpers/recording-host.js';

const ID = (n: number) => n.toString(16).padStart(64, '0');

async function kind(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (ThinError.is(e)) return e.kind;
    throw e;
  }
  return 'ok';
}

async function tarNames(s: Readable): Promise<string[]> {
  const names: string[] = [];
  const x = tarStream.extract();
  x.on('entry', (h, body, next) => {
    names.push(h.name);
    body.on('end', next);
    body.resume();
  });
  const done = new Promise<void>((resolve, reject) => {
    x.on('finish', resolve);
    x.on('error', reject);
  });
  s.pipe(x);
  await done;
  return names;
}

describe('naive diffs against another parent (unprivileged, recording host)', () => {
  const base = tempDir('gd-naive-');
  let n = 0;
  let dir: string;
  let home: string;
  let repo: string;
  let host: RecordingHost;
  let gd: GraphDriver;
  const apply = async (id: string, parent: string, entries: TarEntry[]) => gd.applyDiff(id, parent, Readable.from([await tarOf(entries)]));
  const diffDir = (id: string) => path.join(home, 'layers', id, 'diff');
  const merged = (id: string) => path.join(home, 'layers', id, 'merged');
  const refs = (id: string) => readFileSync(path.join(home, 'layers', id, 'refs'), 'utf8').trim();

  /** ID(1) base: etc/a etc/b opt/x; ID(2) on it; ID(3) on ID(2), whose view is ID(1)'s files with etc/b changed, etc/new added, opt gone. */
  async function threeLayers(): Promise<void> {
    await gd.create(ID(1), '', false, {});
    await apply(ID(1), '', [
      { path: 'etc/', type: 'dir' },
      { path: 'etc/a', content: 'a' },
      { path: 'etc/b', content: 'b' },
      { path: 'opt/', type: 'dir' },
      { path: 'opt/x', content: 'x' },
    ]);
    await gd.create(ID(2), ID(1), false, {});
    await gd.create(ID(3), ID(2), true, {});
    cpSync(diffDir(ID(1)), merged(ID(3)), { recursive: true, preserveTimestamps: true });
    writeFileSync(path.join(merged(ID(3)), 'etc', 'b'), 'B!');
    writeFileSync(path.join(merged(ID(3)), 'etc', 'new'), 'new');
    rmSync(path.join(merged(ID(3)), 'opt'), { recursive: true });
  }

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    home = path.join(dir, 'home');
    repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    mkdirSync(repo, { recursive: true });
    host = new RecordingHost();
    gd = await GraphDriver.open({
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'auto',
      host,
      log: silentLogger(),
    });
    await gd.init({ home, opts: [], uidMaps: [], gidMaps: [] });
  });
  afterEach(async () => {
    await gd.close();
  });

  it("compares the layer's view with a grandparent's: changed directories first, a deleted directory once; mounted only for the answer", async () => {
    await threeLayers();
    const want = [
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/b', Kind: 0 },
      { Path: '/etc/new', Kind: 1 },
      { Path: '/opt', Kind: 2 },
    ];
    expect(await gd.changes(ID(3), ID(1))).toEqual(want);
    expect(await gd.diffSize(ID(3), ID(1))).toBe(2 + 3);
    expect(host.ops('mountOverlay').map((c) => (c.args[0] as { target: string }).target)).toEqual([merged(ID(3)), merged(ID(3))]);
    expect(host.mountedAt(merged(ID(3)))).toBeUndefined();
    expect(refs(ID(3))).toBe('0');
    // the other way round: what ID(1) shows against ID(3)'s view
    expect(await gd.changes(ID(1), ID(3))).toEqual([
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/b', Kind: 0 },
      { Path: '/etc/new', Kind: 2 },
      { Path: '/opt', Kind: 1 },
      { Path: '/opt/x', Kind: 1 },
    ]);
    // its own parent still answers the native way (its diff dir against the stack below)
    expect(await gd.changes(ID(3), ID(2))).toEqual([]);
    expect(await gd.changes(ID(3), ID(3))).toEqual([]);
  });

  it('Diff against a grandparent is a tar of the changes (.wh. for deletions); against "" the whole view; the layers stay mounted and locked until the tar ends', async () => {
    await threeLayers();
    const tar = await gd.diff(ID(3), ID(1));
    expect(host.mountedAt(merged(ID(3)))).toBeDefined();
    const removing = gd.remove(ID(3)); // waits for the stream: nothing is unmounted under it
    await new Promise((r) => setTimeout(r, 20));
    expect(gd.exists(ID(3))).toBe(true);
    expect(await tarNames(tar)).toEqual(['etc/', 'etc/b', 'etc/new', '.wh.opt']);
    await removing;
    expect(gd.exists(ID(3))).toBe(false);
    expect(host.ops('umount').map((c) => c.args[0])).toEqual([merged(ID(3))]); // the Put of the Diff, not a forced one
    await gd.create(ID(4), ID(2), true, {});
    cpSync(diffDir(ID(1)), merged(ID(4)), { recursive: true });
    writeFileSync(path.join(merged(ID(4)), 'top'), 'top');
    expect(await tarNames(await gd.diff(ID(4), ''))).toEqual(['etc/', 'etc/a', 'etc/b', 'opt/', 'opt/x', 'top']);
    await gd.diffSize(ID(4), ID(2)); // takes the layer's lock: the Diff has put its view back by then
    expect(host.mountedAt(merged(ID(4)))).toBeUndefined();
    expect(refs(ID(4))).toBe('0');
  });

  it('ApplyDiff against another parent unpacks onto the view (whiteouts delete), answers DiffSize against it, and reads a refused body to its end', async () => {
    await threeLayers();
    const size = await apply(ID(3), '', [
      { path: 'etc/.wh.a', content: '' },
      { path: 'z', content: 'zzzz' },
    ]);
    expect(readdirSync(merged(ID(3))).sort()).toEqual(['etc', 'z']);
    expect(readdirSync(path.join(merged(ID(3)), 'etc')).sort()).toEqual(['b', 'new']);
    expect(size).toBe(2 + 3 + 4);
    expect(size).toBe(await gd.diffSize(ID(3), ''));
    expect(host.mountedAt(merged(ID(3)))).toBeUndefined();
    expect(refs(ID(3))).toBe('0');
    // a path escape is refused; the rest of the body is still read, the layer put back
    const evil = Buffer.concat([await tarOf([{ path: '../../escape', content: 'x' }]), Buffer.alloc(4 << 20)]);
    const body = Readable.from([evil.subarray(0, 1024), evil.subarray(1024)]);
    expect(await kind(gd.applyDiff(ID(3), ID(1), body))).toBe('invalid-argument');
    expect(body.readableEnded).toBe(true);
    expect(readdirSync(path.join(home, 'layers'))).not.toContain('escape');
    expect(host.mountedAt(merged(ID(3)))).toBeUndefined();
  });

  it('refuses an unknown parent (NotFound) and a thin layer as the target, without mounting anything', async () => {
    await threeLayers();
    for (const call of [gd.changes(ID(3), ID(9)), gd.diffSize(ID(3), ID(9)), gd.diff(ID(3), ID(9)), apply(ID(3), ID(9), [{ path: 'f', content: 'f' }])]) {
      expect(await kind(call)).toBe('not-found');
    }
    expect(host.ops('mountOverlay')).toEqual([]);
    const l1 = addLayer(repo, 'base', { f: 'x' }, { converter: true });
    await gd.create(ID(5), '', false, {});
    await apply(ID(5), '', [{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l1]) }]);
    expect(await kind(apply(ID(5), ID(1), [{ path: 'f', content: 'f' }]))).toBe('failed-precondition');
    expect(readdirSync(diffDir(ID(5)))).toEqual(['thin.json']);
    // reading a thin layer against another parent is fine: its view is its thin.json
    expect(await gd.changes(ID(5), ID(1))).toEqual([
      { Path: '/thin.json', Kind: 1 },
      { Path: '/etc', Kind: 2 },
      { Path: '/opt', Kind: 2 },
    ]);
  });
});

describe('naiveChanges / naiveChangesSize (archive.ChangesDirs / ChangesSize)', () => {
  const base = tempDir('gd-naive-fn-');
  let n = 0;
  const trees = () => {
    const d = path.join(base, String(n++));
    mkdirSync(path.join(d, 'old'), { recursive: true });
    mkdirSync(path.join(d, 'new'), { recursive: true });
    return { old: path.join(d, 'old'), now: path.join(d, 'new') };
  };

  it('counts security.capability (read through the host), ignores directory mtimes, compares file size and mode', async () => {
    const { old, now } = trees();
    for (const r of [old, now]) {
      mkdirSync(path.join(r, 'd'));
      writeFileSync(path.join(r, 'd', 'same'), 'same');
      writeFileSync(path.join(r, 'cap'), 'bin');
      writeFileSync(path.join(r, 'mode'), 'm');
    }
    // whole seconds on both sides (as tar extraction leaves them): equal mtimes
    for (const r of [old, now]) for (const f of ['d/same', 'cap', 'mode']) utimesSync(path.join(r, f), 1_000_000, 1_000_000);
    chmodSync(path.join(now, 'mode'), 0o600);
    chmodSync(path.join(old, 'mode'), 0o644);
    const host = new RecordingHost();
    expect(await naiveChanges(now, old, host)).toEqual([{ Path: '/mode', Kind: 0 }]);
    host.lsetxattr(path.join(now, 'cap'), 'security.capability', Buffer.from([1, 0, 0, 2]));
    expect(await naiveChanges(now, old, host)).toEqual([
      { Path: '/cap', Kind: 0 },
      { Path: '/mode', Kind: 0 },
    ]);
    // the same capability on both sides is no change
    host.lsetxattr(path.join(old, 'cap'), 'security.capability', Buffer.from([1, 0, 0, 2]));
    expect(await naiveChanges(now, old, host)).toEqual([{ Path: '/mode', Kind: 0 }]);
  });

  it('adds everything under an added directory and under a file replaced by a directory; sizes count hard links once and skip directories', async () => {
    const { old, now } = trees();
    writeFileSync(path.join(old, 'was-file'), 'f');
    mkdirSync(path.join(now, 'was-file'));
    writeFileSync(path.join(now, 'was-file', 'in'), 'in!');
    mkdirSync(path.join(now, 'new', 'deep'), { recursive: true });
    writeFileSync(path.join(now, 'new', 'deep', 'h1'), '12345');
    linkSync(path.join(now, 'new', 'deep', 'h1'), path.join(now, 'new', 'h2'));
    const ch = await naiveChanges(now, old, new RecordingHost());
    expect(ch).toEqual([
      { Path: '/new', Kind: 1 },
      { Path: '/new/deep', Kind: 1 },
      { Path: '/new/deep/h1', Kind: 1 },
      { Path: '/new/h2', Kind: 1 },
      { Path: '/was-file', Kind: 0 },
      { Path: '/was-file/in', Kind: 1 },
    ]);
    expect(statSync(path.join(now, 'new', 'h2')).nlink).toBe(2);
    expect(await naiveChangesSize(now, ch)).toBe(5 + 3);
    // against nothing: every path added, the root never reported
    expect((await naiveChanges(now, null, new RecordingHost())).every((c) => c.Kind === 1)).toBe(true);
    expect(await naiveChanges(old, old, new RecordingHost())).toEqual([]);
  });
});
