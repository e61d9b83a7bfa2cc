/**
 * Nested catalogs inside a big layer (src/convert/catalogs.ts): which
 * directories get a `.cvmfscatalog` so that no catalog of a published layer
 * holds more than the cut (a CVMFS publish aborts above 200 000 entries),
 * markers put into an unpacked tree (transaction path) and into the ingest
 * tar's trailer (ingest path), both listed as hidden in the layer's record.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { addNestedCatalogs, CATALOG_CUT, chooseCatalogDirs, countEntries } from '../../src/convert/catalogs.js';
import { ingestTrailer } from '../../src/convert/ingest.js';
import { parseLayerMarker } from '../../src/core/cvmfs/layout.js';
import { systemHost } from '../../src/core/host/host.js';
import { lutimesNs } from '../../src/core/host/sys.js';
import { LayerRewriter, type RewriteResult } from '../../src/core/tar/rewrite.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { rawEntry, streamOf, tar } from '../tar/helpers.js';

const parentOf = (d: string) => (d.lastIndexOf('/') < 0 ? '' : d.slice(0, d.lastIndexOf('/')));

/** Entries per catalog ('' = the layer's own catalog), counted independently of the code under test. */
function catalogSizes(direct: ReadonlyMap<string, number>, cuts: readonly string[]): Map<string, number> {
  const set = new Set(cuts);
  const sizes = new Map<string, number>([['', 0]]);
  for (const c of cuts) sizes.set(c, 0);
  for (const [d, n] of direct) {
    let c = d;
    while (c !== '' && !set.has(c)) c = parentOf(c);
    sizes.set(c, sizes.get(c)! + n);
  }
  return sizes;
}

/** A deterministic pseudo-random tree: dir → direct entries (subdirectories included). */
function randomTree(seed: number, maxDirect: number): Map<string, number> {
  let s = seed;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
  const direct = new Map<string, number>();
  const grow = (d: string, depth: number): void => {
    const kids = depth < 4 ? rnd(5) : 0;
    const files = rnd(maxDirect - kids + 1);
    direct.set(d, kids + files);
    for (let i = 0; i < kids; i++) grow(d === '' ? `d${i}` : `${d}/d${i}`, depth + 1);
  };
  grow('', 0);
  return direct;
}

describe('chooseCatalogDirs', () => {
  it('a flat directory over the cut cannot be split: nothing for the layer root, nothing below a flat subdirectory', () => {
    expect(chooseCatalogDirs(new Map([['', 500]]), 100)).toEqual([]);
    // the big directory may get its own catalog (the layer's stays small), but nothing can split it further
    const cuts = chooseCatalogDirs(
      new Map([
        ['', 3],
        ['big', 500],
        ['small', 3],
      ]),
      100,
    );
    expect(cuts).toEqual(['big']);
    expect(
      catalogSizes(
        new Map([
          ['', 3],
          ['big', 500],
          ['small', 3],
        ]),
        cuts,
      ).get(''),
    ).toBeLessThanOrEqual(100);
  });

  it('nothing when the layer is under the cut; the default cut is half of CVMFS’s limit', () => {
    const direct = new Map([
      ['', 4],
      ['a', 30],
      ['b', 30],
      ['a/c', 30],
    ]);
    expect(chooseCatalogDirs(direct, 100)).toEqual([]);
    expect(CATALOG_CUT).toBe(100_000);
  });

  it('many small directories: split bottom-up, every catalog at most the cut, the root never chosen', () => {
    // 5 top dirs × 8 subdirs × 30 files
    const direct = new Map<string, number>([['', 5]]);
    for (let i = 0; i < 5; i++) {
      direct.set(`t${i}`, 8);
      for (let j = 0; j < 8; j++) direct.set(`t${i}/s${j}`, 30);
    }
    const cuts = chooseCatalogDirs(direct, 100);
    expect(cuts).not.toContain('');
    const sizes = catalogSizes(direct, cuts);
    for (const [c, n] of sizes) expect([c, n <= 100]).toEqual([c, true]);
    // bottom-up: each top dir keeps what fits (8 + 3 × 30 = 98) and hands 5 of its 8 subdirs to catalogs of their own
    for (let i = 0; i < 5; i++) expect(cuts.filter((c) => c.startsWith(`t${i}/`))).toHaveLength(5);
    expect(sizes.get('t0')).toBe(98);
    // the layer's own catalog: the 5 top directories
    expect(sizes.get('')).toBe(5);
    expect(cuts).toEqual([...cuts].sort());
  });

  it('random trees: every catalog ≤ max(cut, its own directory’s direct entries); the root never chosen; sorted', () => {
    let chosen = 0;
    let unsplittable = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const cut = 20 + (seed % 7) * 10;
      const direct = randomTree(seed, seed % 5 === 0 ? cut * 2 : cut);
      const cuts = chooseCatalogDirs(direct, cut);
      chosen += cuts.length;
      expect(cuts).not.toContain('');
      expect(new Set(cuts).size).toBe(cuts.length);
      expect(cuts).toEqual([...cuts].sort());
      for (const c of cuts) expect(direct.has(c)).toBe(true);
      for (const [c, n] of catalogSizes(direct, cuts)) {
        if (n <= cut) continue;
        unsplittable++;
        expect({ seed, c, n, ownDirect: direct.get(c) }).toEqual({ seed, c, n, ownDirect: n });
      }
    }
    // the trees did need splitting, and some had directories no split can help
    expect(chosen).toBeGreaterThan(300);
    expect(unsplittable).toBeGreaterThan(5);
  });

  // Regression test (a bug found and fixed: minor, src/convert/catalogs.ts chooseCatalogDirs: children of equal size are cut in the map's
  // insertion order, `sort((a, b) => remaining(b) - remaining(a))` has no tie-break by name). The same
  // layer gets different catalogs from the ingest path (tar order) and the transaction path
  // (countEntries: readdir order of the file system), and from one Stratum-0 to another.
  it('the choice depends on the tree only, not on the order its directories were seen in', () => {
    const entries: [string, number][] = [
      ['', 2],
      ['a', 60],
      ['b', 60],
      ['c', 10],
    ];
    const forward = chooseCatalogDirs(new Map(entries), 100);
    const backward = chooseCatalogDirs(new Map([...entries].reverse()), 100);
    expect(forward).toEqual(backward);
  });
});

describe('addNestedCatalogs on an unpacked tree', () => {
  const base = tempDir('cvmfs-thin-catalogs-');
  let n = 0;

  /** root/{t0..t3}/{f0..f99}, every directory's mtime set to sec.nsec */
  function tree(nsec: number): string {
    const root = path.join(base, `tree${n++}`);
    fs.mkdirSync(root);
    for (let i = 0; i < 4; i++) {
      fs.mkdirSync(path.join(root, `t${i}`));
      for (let j = 0; j < 100; j++) fs.writeFileSync(path.join(root, `t${i}`, `f${j}`), '');
    }
    for (const d of ['t0', 't1', 't2', 't3', '']) lutimesNs(path.join(root, d), 1_600_000_000, 0, 1_600_000_000 + d.length, nsec);
    return root;
  }
  const mtimeNs = (p: string) => fs.lstatSync(p, { bigint: true }).mtimeNs;

  it('puts empty markers where chooseCatalogDirs says, returns them (for the record’s hidden), directory mtimes kept through the host', async () => {
    const root = tree(0);
    const before = new Map(['t0', 't1', 't2', 't3', ''].map((d) => [d, mtimeNs(path.join(root, d))]));
    const counted = await countEntries(root);
    expect(Object.fromEntries(counted)).toEqual({ '': 4, t0: 100, t1: 100, t2: 100, t3: 100 });
    const host = new RecordingHost();
    const hidden = await addNestedCatalogs(host, root, 100);
    expect(hidden).toEqual(chooseCatalogDirs(counted, 100).map((d) => `${d}/.cvmfscatalog`));
    expect(hidden).toEqual(['t0/.cvmfscatalog', 't1/.cvmfscatalog', 't2/.cvmfscatalog', 't3/.cvmfscatalog']);
    for (const h of hidden) {
      const st = fs.lstatSync(path.join(root, h));
      expect([h, st.isFile(), st.size, st.mode & 0o777]).toEqual([h, true, 0, 0o644]);
    }
    for (const [d, t] of before) expect([d, mtimeNs(path.join(root, d))]).toEqual([d, t]);
    expect(host.ops('lutimesNs').map((c) => c.args.slice(0, 1).concat(c.args.slice(3)))).toEqual(
      ['t0', 't1', 't2', 't3'].map((d) => [path.join(root, d), 1_600_000_002, 0]),
    );
  });

  // Regression test (a bug found and fixed: src/convert/catalogs.ts addNestedCatalogs: `fsp.utimes(dir, st.atime, st.mtime)` with the Date
  // of a non-bigint lstat keeps milliseconds only). A directory's mtime 1600000000.123456789 comes back
  // as 1600000000.123000000: a repository with CVMFS_ENABLE_MTIME_NS publishes a time the image never had.
  it('keeps sub-millisecond directory mtimes too', async () => {
    const root = tree(123_456_789);
    const before = mtimeNs(path.join(root, 't0'));
    expect(before % 1_000_000_000n).toBe(123_456_789n);
    await addNestedCatalogs(systemHost, root, 100);
    expect(mtimeNs(path.join(root, 't0'))).toBe(before);
  });

  it('an existing .cvmfscatalog (the image’s own) is neither overwritten nor listed as hidden', async () => {
    const root = tree(0);
    fs.writeFileSync(path.join(root, 't2', '.cvmfscatalog'), 'the image’s own\n');
    const hidden = await addNestedCatalogs(systemHost, root, 100);
    expect(fs.readFileSync(path.join(root, 't2', '.cvmfscatalog'), 'utf8')).toBe('the image’s own\n');
    expect(hidden).not.toContain('t2/.cvmfscatalog');
    expect(hidden.length).toBeGreaterThan(0);
    for (const h of hidden) expect(fs.readFileSync(path.join(root, h), 'utf8')).toBe('');
  });
});

describe('ingestTrailer (the ingest path’s markers)', () => {
  const desc = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${'ab'.repeat(32)}`, size: 1 };

  async function rewritten(input: Buffer): Promise<RewriteResult> {
    let res: RewriteResult | null = null;
    const rw = new LayerRewriter({ prefix: 'layerfs/', trailer: (r) => ((res = r), []) });
    await pipeline(streamOf(input), rw, new Writable({ write: (_c, _e, cb) => cb() }));
    return res!;
  }

  const bigLayer = (extra: Buffer[] = []) =>
    tar(
      ...[0, 1, 2, 3].flatMap((i) => [rawEntry({ name: `t${i}/`, type: '5' }), ...Array.from({ length: 100 }, (_, j) => rawEntry({ name: `t${i}/f${j}` }))]),
      rawEntry({ name: 'etc/.wh.gone' }),
      ...extra,
    );

  it('over the cut: markers under layerfs/ before the record, listed as hidden in a record readers accept; under it: none', async () => {
    const r = await rewritten(bigLayer());
    const trailer = ingestTrailer(r, desc, 100);
    const names = trailer.map((e) => e.name);
    expect(names).toEqual([
      'layerfs/t0/.cvmfscatalog',
      'layerfs/t1/.cvmfscatalog',
      'layerfs/t2/.cvmfscatalog',
      'layerfs/t3/.cvmfscatalog',
      '.metadata/',
      '.metadata/layers.json',
      '.metadata/cvmfs-thin-layer.json',
    ]);
    const marker = parseLayerMarker(String(trailer.at(-1)!.data), 'ab'.repeat(32));
    expect(marker?.record).toEqual({
      deleted: ['etc/gone'],
      opaque: [],
      xattrs: [],
      hidden: ['t0/.cvmfscatalog', 't1/.cvmfscatalog', 't2/.cvmfscatalog', 't3/.cvmfscatalog'],
    });
    expect(marker).toMatchObject({ version: 2, whiteouts: 'record', diff_id: r.diffId, entries: r.entries });
    const small = ingestTrailer(r, desc, r.entries);
    expect(small.map((e) => e.name)).toEqual(['.metadata/', '.metadata/layers.json', '.metadata/cvmfs-thin-layer.json']);
    expect(parseLayerMarker(String(small.at(-1)!.data), 'ab'.repeat(32))?.record?.hidden).toEqual([]);
  });

  // Regression test (a bug found and fixed: src/convert/ingest.ts ingestTrailer): the markers are chosen from entry counts only; when the
  // image itself has `t2/.cvmfscatalog`, the trailer appends an empty `layerfs/t2/.cvmfscatalog` (an
  // ingest replaces the image's file with it) and lists it as hidden, so containers lose the image's
  // file. The transaction path (addNestedCatalogs) keeps it and does not hide it.
  it('a directory holding the image’s own .cvmfscatalog: the image’s file is neither replaced nor hidden', async () => {
    const r = await rewritten(bigLayer([rawEntry({ name: 't2/.cvmfscatalog' }, 'the image’s own\n')]));
    const trailer = ingestTrailer(r, desc, 100);
    expect(trailer.map((e) => e.name)).not.toContain('layerfs/t2/.cvmfscatalog');
    const marker = parseLayerMarker(String(trailer.at(-1)!.data), 'ab'.repeat(32));
    expect(marker?.record?.hidden).not.toContain('t2/.cvmfscatalog');
  });
});
