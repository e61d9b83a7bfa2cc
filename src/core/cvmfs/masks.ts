/**
 * Local "mask" directories that make a CVMFS layer directory overlay-correct
 * without touching it (CVMFS is read-only, and a publish drops whiteouts):
 *
 *  - `below`, placed under the layer: overlay whiteouts (0/0 devices) for the
 *    names the layer deletes and `trusted.overlay.opaque=y` directories for
 *    the ones it makes opaque — they act on the layers below only, as OCI says;
 *  - `above`, placed over the layer: whiteouts hiding files that are not part
 *    of the image (DUCC's `.wh.*` files, nested-catalog markers
 *    `.cvmfscatalog`), and copies of entries whose xattrs the publish dropped
 *    (`security.capability`: owner, mode, times, content and xattrs as the
 *    layer's record says). Directories on the way copy the layer's own
 *    attributes, so the merged view is unchanged.
 *
 * What goes into them is a MaskPlan: from a scan of a layer that keeps OCI
 * whiteouts as plain files (DUCC's layerfs), or from a converter layer's
 * record (layout.ts LayerRecord). Built under a temporary name, `done` last,
 * renamed into place.
 */
import { promises as fsp } from 'node:fs';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { pathExists, removeTree } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { classifyWhiteout, OVERLAY_OPAQUE_XATTR } from '../fs/whiteout.js';

/** The nested-catalog marker a CVMFS publisher honours (never part of an image). */
export const CATALOG_MARKER = '.cvmfscatalog';

interface WhiteoutScan {
  /** Relative paths of `.wh.<name>` entries. */
  whiteouts: string[];
  /** Relative paths of directories holding `.wh..wh..opq`. */
  opaques: string[];
  /** Relative paths of `.cvmfscatalog` files. */
  catalogs: string[];
  entries: number;
}

export interface MaskPlan {
  /** below: names deleted in the layers under this one */
  deleted: string[];
  /** below: directories made opaque ('' = the root) */
  opaque: string[];
  /** above: names of the layer to hide */
  hide: string[];
  /** above: entries of the layer copied up (their xattrs were dropped on the way) */
  fixups: string[];
  /**
   * The xattrs every entry of the layer has (from its record): what an entry
   * copied into `above` gets. Never read from the layer itself: a CVMFS
   * client lists its own magic `user.*` attributes there.
   */
  xattrs: Map<string, Xattr[]>;
  /** Modes (07777) to give copied entries instead of the layer's (special bits a DUCC chain lost). */
  modes?: Map<string, number>;
}

export interface Xattr {
  name: string;
  value: Buffer;
}

export const emptyPlan = (p: MaskPlan): boolean => p.deleted.length + p.opaque.length + p.hide.length + p.fixups.length === 0;

/** The plan for a layer that keeps OCI whiteouts as plain `.wh.*` files (DUCC's layerfs). */
export function planFromScan(scan: WhiteoutScan): MaskPlan {
  return {
    deleted: scan.whiteouts.map((w) => path.join(path.dirname(w), path.basename(w).slice(4))),
    opaque: scan.opaques,
    hide: [...scan.whiteouts, ...scan.opaques.map((d) => (d === '' ? '.wh..wh..opq' : `${d}/.wh..wh..opq`)), ...scan.catalogs].sort(),
    fixups: [],
    xattrs: new Map(),
  };
}

/** Find the OCI whiteout entries and catalog markers of a layer tree (reads directories only). */
export async function scanWhiteouts(root: string): Promise<WhiteoutScan> {
  const res: WhiteoutScan = { whiteouts: [], opaques: [], catalogs: [], entries: 0 };
  const queue: string[] = [''];
  const worker = async () => {
    for (;;) {
      const rel = queue.pop();
      if (rel === undefined) return;
      const ents = await fsp.readdir(path.join(root, rel), { withFileTypes: true });
      for (const e of ents) {
        res.entries++;
        const p = rel === '' ? e.name : `${rel}/${e.name}`;
        const w = classifyWhiteout(e.name);
        if (w?.kind === 'opaque') res.opaques.push(rel);
        else if (w?.kind === 'whiteout') res.whiteouts.push(p);
        else if (e.name === CATALOG_MARKER && e.isFile()) res.catalogs.push(p);
        else if (e.isDirectory()) queue.push(p);
      }
    }
  };
  // a few directory reads in flight: CVMFS answers readdir from its catalog
  for (;;) {
    const n = Math.min(8, queue.length);
    if (n === 0) break;
    await Promise.all(Array.from({ length: n }, worker));
  }
  res.whiteouts.sort();
  res.opaques.sort();
  res.catalogs.sort();
  return res;
}

/** Owner, mode, the recorded xattrs and times of an entry onto its copy, in an order that keeps each. */
async function copyAttrs(host: Host, src: BigIntStats, dst: string, xattrs: readonly Xattr[] = [], mode?: number): Promise<void> {
  host.lchown(dst, Number(src.uid), Number(src.gid)); // first: a chown clears setuid bits and security.capability
  if (!src.isSymbolicLink()) await fsp.chmod(dst, mode ?? Number(src.mode & 0o7777n));
  for (const x of xattrs) {
    try {
      host.lsetxattr(dst, x.name, x.value);
    } catch {
      /* e.g. security.selinux on a host without it: attributes are best effort */
    }
  }
  // to the ns, as the layer has them (a Date would round them to the ms)
  const ns = 1_000_000_000n;
  host.lutimesNs(dst, Number(src.atimeNs / ns), Number(src.atimeNs % ns), Number(src.mtimeNs / ns), Number(src.mtimeNs % ns));
}

/** Copy one entry of the layer (not a directory) into the mask; false when it is not there. */
async function copyEntry(layer: string, rel: string, dst: string): Promise<BigIntStats | null> {
  const src = path.join(layer, rel);
  let st: BigIntStats;
  try {
    st = await fsp.lstat(src, { bigint: true });
  } catch {
    return null;
  }
  if (st.isDirectory()) await fsp.mkdir(dst, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => (e.code === 'EEXIST' ? undefined : Promise.reject(e)));
  else if (st.isFile()) await fsp.copyFile(src, dst);
  else if (st.isSymbolicLink()) await fsp.symlink(await fsp.readlink(src), dst);
  else return null; // devices and fifos carry no xattrs worth a copy
  return st;
}

function parentsOf(names: Iterable<string>, into: Set<string>): void {
  for (const n of names) {
    let d = path.dirname(n);
    while (d !== '.' && d !== '') {
      into.add(d);
      d = path.dirname(d);
    }
  }
}

/** Build `<dest>/below` and `<dest>/above` for a layer, atomically (`<dest>/done` last). */
export async function buildMasks(layer: string, plan: MaskPlan, dest: string, host: Host): Promise<void> {
  const tmp = `${dest}.tmp-${process.pid}-${Date.now()}`;
  await removeTree(tmp);
  const below = path.join(tmp, 'below');
  const above = path.join(tmp, 'above');
  await fsp.mkdir(below, { recursive: true, mode: 0o755 });
  await fsp.mkdir(above, { recursive: true, mode: 0o755 });
  // below: what the deletions mean for the layers under this one
  for (const w of plan.deleted) {
    await fsp.mkdir(path.join(below, path.dirname(w)), { recursive: true, mode: 0o755 });
    host.mkWhiteout(path.join(below, w));
  }
  for (const d of plan.opaque) {
    await fsp.mkdir(path.join(below, d), { recursive: true, mode: 0o755 });
    host.lsetxattr(path.join(below, d), OVERLAY_OPAQUE_XATTR, 'y');
  }
  // above: every directory on the way copies the layer's attributes
  const dirs = new Set<string>(['']);
  parentsOf([...plan.hide, ...plan.fixups], dirs);
  const sorted = [...dirs].sort((a, b) => a.split('/').length - b.split('/').length);
  for (const d of sorted) if (d !== '') await fsp.mkdir(path.join(above, d), { mode: 0o755 });
  for (const f of plan.fixups) {
    if (f === '' || dirs.has(f)) {
      dirs.add(f);
      continue;
    }
    const st = await copyEntry(layer, f, path.join(above, f));
    if (!st) continue;
    if (st.isDirectory()) dirs.add(f);
    else await copyAttrs(host, st, path.join(above, f), plan.xattrs.get(f), plan.modes?.get(f));
  }
  for (const n of plan.hide) host.mkWhiteout(path.join(above, n));
  // directory attributes deepest first, so that setting a parent's mtime is not undone by its children
  for (const d of [...dirs].sort((a, b) => b.split('/').length - a.split('/').length)) {
    await copyAttrs(host, await fsp.lstat(path.join(layer, d), { bigint: true }), path.join(above, d), plan.xattrs.get(d), plan.modes?.get(d));
  }
  await fsp.writeFile(path.join(tmp, 'done'), `${layer}\n`);
  if (await pathExists(path.join(dest, 'done'))) {
    // built meanwhile by a concurrent request: keep that one
    await removeTree(tmp);
    return;
  }
  await removeTree(dest);
  try {
    await fsp.rename(tmp, dest);
  } catch (e) {
    await removeTree(tmp);
    if (!(await pathExists(path.join(dest, 'done')))) throw e;
  }
}
