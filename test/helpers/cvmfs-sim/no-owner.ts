/**
 * Observed on a real CVMFS 2.12 (`cvmfs_server ingest -k -t - -b .layers/ab/abcd`
 * into a repository without `.layers`): the directories the ingest creates
 * implicitly — missing parents of BASE, and BASE itself when the tar has no
 * `./` entry — get no valid owner (`ls` shows nobody:nogroup), and a later
 * transaction cannot write into them even as root (`touch
 * /cvmfs/<repo>/.layers/.cvmfscatalog`: Permission denied, the union cannot
 * copy them up). The simulator remembers those directories and refuses the
 * publish of a transaction that wrote below them (the real one fails the
 * write itself, which the converter turns into an aborted transaction: the
 * same outcome).
 */
import fs from 'node:fs';
import path from 'node:path';
import { SimError } from './fsops.js';
import type { SimPaths } from './sim.js';

/** A time no tar entry of a test carries: the ingest directory kept it = the tar had no `./` entry. */
export const NO_ROOT_ENTRY = 1;

/** The directories an ingest into `base` creates without an owner (relative to the repository root). */
export function implicitDirs(next: string, base: string, extracted: string): string[] {
  const out: string[] = [];
  let cur = '';
  const segs = base.split('/');
  for (const [i, seg] of segs.entries()) {
    cur = cur === '' ? seg : `${cur}/${seg}`;
    if (fs.existsSync(path.join(next, cur))) continue;
    const isBase = i === segs.length - 1;
    if (!isBase || fs.lstatSync(extracted).mtimeMs === NO_ROOT_ENTRY * 1000) out.push(cur);
  }
  return out;
}

export function readNoOwner(p: SimPaths): string[] {
  try {
    return JSON.parse(fs.readFileSync(p.noOwner, 'utf8')) as string[];
  } catch {
    return [];
  }
}

export function recordNoOwner(p: SimPaths, dirs: string[]): void {
  if (dirs.length === 0) return;
  fs.writeFileSync(p.noOwner, JSON.stringify([...new Set([...readNoOwner(p), ...dirs])]));
}

/** A transaction that wrote below a directory without an owner cannot publish. */
export function refuseWritesBelowNoOwner(p: SimPaths): void {
  const bad = new Set(readNoOwner(p));
  if (bad.size === 0) return;
  const walk = (rel: string): void => {
    for (const n of fs.readdirSync(path.join(p.upper, rel))) {
      const r = rel === '' ? n : `${rel}/${n}`;
      if (bad.has(rel))
        throw new SimError(
          `publish failed: ${r}: permission denied (EACCES): its directory /${rel} was created by an ingest -k without a valid owner and cannot be written in a transaction`,
        );
      if (fs.lstatSync(path.join(p.upper, r)).isDirectory()) walk(r);
    }
  };
  walk('');
}
