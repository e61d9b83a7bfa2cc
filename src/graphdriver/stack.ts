/**
 * Lower-layer computation for the graph driver, pure: which directories a
 * layer mounts below its own diff, and the overlay mount data for them.
 *
 * A layer's stack is its parent's diff, the grandparent's diff, … down to
 * the base layer — except that a thin layer ends the walk: its own diff
 * (holding only thin.json) is never a lower; the CVMFS layer directories its
 * manifest resolved to take its place. Paths in the mount data are relative
 * to Home (`l/<n>` short links, or `m/<n>` idmapped mounts), so 500 lowers
 * fit in the one page that mount(2) accepts.
 */
import { InternalError } from '../core/errors.js';
import { computeMounts, type LowerDir } from '../core/mounts.js';

export interface StackLayer {
  id: string;
  parent: string;
  /** Short link name of the layer's diff dir in l/. */
  link: string;
  thin?: { lowers: readonly { link: string; dir: string }[] } | undefined;
}

export interface StackEntry {
  /** Path in the overlay options, relative to Home. */
  rel: string;
  /** The real directory (dedupe key, existence checks, Changes). */
  real: string;
  /** A CVMFS layer or mask (not a local diff dir). */
  external: boolean;
  /** The layer that contributed the entry. */
  layer: string;
}

export interface StackOptions {
  /** Thin lowers are used through their idmapped mounts (m/<n>) rather than l/<n>. */
  idmapped: boolean;
  /** Absolute diff dir of a local layer. */
  diffDir: (id: string) => string;
}

/** Lower directories of a layer whose parent is `parent`, nearest first. */
export function stackOf(get: (id: string) => StackLayer | undefined, parent: string, o: StackOptions): StackEntry[] {
  const out: StackEntry[] = [];
  const seen = new Set<string>();
  for (let n = parent; n !== ''; ) {
    if (seen.has(n)) throw new InternalError(`parent chain of ${parent} loops at ${n}`);
    seen.add(n);
    const l = get(n);
    if (!l) throw new InternalError(`parent chain of ${parent} is broken: layer ${n} is missing`);
    if (l.thin) {
      for (const t of l.thin.lowers) out.push({ rel: `${o.idmapped ? 'm' : 'l'}/${t.link}`, real: t.dir, external: true, layer: n });
      break;
    }
    out.push({ rel: `l/${l.link}`, real: o.diffDir(n), external: false, layer: n });
    n = l.parent;
  }
  return out;
}

/** The thin layer at the bottom of a stack, if any. */
export function thinBase<T extends StackLayer>(get: (id: string) => T | undefined, parent: string): T | undefined {
  const seen = new Set<string>();
  for (let n = parent; n !== '' && !seen.has(n); ) {
    seen.add(n);
    const l = get(n);
    if (!l) return undefined;
    if (l.thin) return l;
    n = l.parent;
  }
  return undefined;
}

/** overlayfs refuses more lower layers than this. */
export const MAX_LOWERS = 500;
/** mount(2) copies one page of options, NUL included. */
export const MAX_MOUNT_DATA = 4095;

/** overlay mount data for layer `id` (its upper/work dirs are layers/<id>/{diff,work}, relative to Home). */
export function overlayData(id: string, stack: readonly StackEntry[], indexOff: boolean): string {
  const lowers: LowerDir[] = stack.map((s) => ({ overlay: s.rel, real: s.real }));
  const rel = `layers/${id}`;
  const [m] = computeMounts({ readonly: false, fs: `${rel}/diff`, work: `${rel}/work`, lowers, indexOff });
  if (!m || m.type !== 'overlay') throw new InternalError(`layer ${id} has no lower layers to mount`);
  return m.options.join(',');
}
