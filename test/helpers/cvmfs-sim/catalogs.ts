/**
 * Nested catalogs of the simulated repository: every directory holding a
 * `.cvmfscatalog` file starts one; every entry belongs to the catalog of its
 * nearest such ancestor (the root catalog otherwise). A catalog's mountpoint
 * directory counts in its own catalog (its root entry) and in the parent one
 * (the transition point), as CVMFS keeps it in both.
 */
import fs from 'node:fs';
import path from 'node:path';

export const CATALOG_MARKER = '.cvmfscatalog';
export const DEFAULT_CATALOG_LIMIT = 200_000;

/** Entries per catalog, keyed by the catalog's mountpoint ('/' for the root catalog). */
export function catalogEntries(root: string): Map<string, number> {
  const counts = new Map<string, number>([['/', 1]]);
  const add = (c: string) => counts.set(c, (counts.get(c) ?? 0) + 1);
  const walk = (abs: string, rel: string, catalog: string): void => {
    for (const d of fs.readdirSync(abs, { withFileTypes: true })) {
      const childAbs = path.join(abs, d.name);
      const childRel = `${rel}/${d.name}`;
      add(catalog);
      if (!d.isDirectory()) continue;
      let c = catalog;
      if (fs.existsSync(path.join(childAbs, CATALOG_MARKER))) {
        c = childRel;
        add(c);
      }
      walk(childAbs, childRel, c);
    }
  };
  walk(root, '', '/');
  return counts;
}

/** The catalogs above `limit`, as CVMFS words its refusal. */
export function catalogsOverLimit(root: string, limit: number): string[] {
  const out: string[] = [];
  for (const [c, n] of catalogEntries(root)) {
    if (n > limit) out.push(`catalog at ${c} has more than ${limit} entries (${n})`);
  }
  return out;
}
