/**
 * Nested catalogs inside a layer: a CVMFS publish aborts when one catalog
 * holds more than 200 000 entries, and every layer already has its own
 * catalog (`.layers/<xx>/<hex>/.cvmfscatalog`). A layer with more entries
 * than CATALOG_CUT gets `.cvmfscatalog` markers in some of its directories,
 * chosen bottom-up so that each catalog stays below the cut where the tree
 * allows it (a single directory with more direct entries cannot be split:
 * CVMFS cannot either). The markers are listed in the layer's record as
 * hidden, so no container ever sees them.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CATALOG_MARKER } from '../core/cvmfs/masks.js';
import type { Host } from '../core/host/host.js';

/** Entries a nested catalog is kept below (half of CVMFS's hard limit). */
export const CATALOG_CUT = 100_000;

const parentOf = (d: string): string => {
  const i = d.lastIndexOf('/');
  return i < 0 ? '' : d.slice(0, i);
};

/**
 * `direct`: directory ('' = the layer root) → entries directly in it. Returns
 * the directories that get a catalog marker (never the root), sorted.
 */
export function chooseCatalogDirs(direct: ReadonlyMap<string, number>, cut = CATALOG_CUT): string[] {
  const children = new Map<string, string[]>();
  for (const d of direct.keys()) {
    if (d === '') continue;
    const p = parentOf(d);
    let l = children.get(p);
    if (!l) children.set(p, (l = []));
    l.push(d);
  }
  const remaining = new Map<string, number>();
  const cuts: string[] = [];
  // deepest first: children are settled before their parents
  const order = [...direct.keys()].sort((a, b) => (b === '' ? -1 : b.split('/').length) - (a === '' ? -1 : a.split('/').length));
  for (const d of order) {
    const kids = (children.get(d) ?? [])
      .filter((c) => (remaining.get(c) ?? 0) > 0)
      .sort((a, b) => remaining.get(b)! - remaining.get(a)! || (a < b ? -1 : a > b ? 1 : 0));
    let total = (direct.get(d) ?? 0) + kids.reduce((a, c) => a + remaining.get(c)!, 0);
    for (const c of kids) {
      if (total <= cut) break;
      cuts.push(c);
      total -= remaining.get(c)!;
      remaining.set(c, 0);
    }
    remaining.set(d, total);
  }
  return cuts.sort();
}

/** Count the entries of every directory of an unpacked tree. */
export async function countEntries(root: string): Promise<Map<string, number>> {
  const direct = new Map<string, number>();
  const walk = async (rel: string): Promise<void> => {
    const ents = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
    direct.set(rel, ents.length);
    for (const e of ents) if (e.isDirectory()) await walk(rel === '' ? e.name : `${rel}/${e.name}`);
  };
  await walk('');
  return direct;
}

/**
 * Put catalog markers into a big unpacked layer (directory times kept, to
 * the nanosecond, through `host`). Returns the markers' paths relative to `root`.
 */
export async function addNestedCatalogs(host: Host, root: string, cut = CATALOG_CUT): Promise<string[]> {
  const dirs = chooseCatalogDirs(await countEntries(root), cut);
  const out: string[] = [];
  for (const d of dirs) {
    const dir = path.join(root, d);
    const marker = path.join(dir, CATALOG_MARKER);
    const st = await fsp.lstat(dir, { bigint: true });
    try {
      await fsp.writeFile(marker, '', { flag: 'wx', mode: 0o644 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue; // the image's own: CVMFS honours it anyway
      throw e;
    }
    const ns = 1_000_000_000n;
    host.lutimesNs(dir, Number(st.atimeNs / ns), Number(st.atimeNs % ns), Number(st.mtimeNs / ns), Number(st.mtimeNs % ns));
    out.push(`${d}/${CATALOG_MARKER}`);
  }
  return out;
}
