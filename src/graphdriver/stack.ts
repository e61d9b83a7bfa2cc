/**
 * The graph driver's view of the shared chain walk (core/stack/chain.ts), pure:
 * which directories a layer mounts below its own diff, as paths relative to
 * Home, and the overlay mount for them.
 *
 * A layer's stack is its parent's diff, the grandparent's diff, … down to
 * the base layer — except that a thin layer ends the walk: its own diff
 * (holding only thin.json) is never a lower; the CVMFS layer directories its
 * manifest resolved to take its place. Lowers are named by `l/<n>` short
 * links, or `m/<n>` idmapped mounts of the thin lowers.
 */
import { InternalError } from '../core/errors/errors.js';
import type { OverlayMount } from '../core/host/host.js';
import { dedupeLowers } from '../core/stack/mounts.js';
import { chainLowers, type ChainNode } from '../core/stack/index.js';

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

/** Lower directories of a layer whose parent is `parent`, nearest first; thin lowers through m/ when `idmapped`. */
export function stackOf(get: (id: string) => ChainNode | undefined, parent: string, idmapped: boolean): StackEntry[] {
  return chainLowers(get, parent, 'layer').map((l) => ({
    rel: `${l.external && idmapped ? 'm' : 'l'}/${l.link}`,
    real: l.real,
    external: l.external,
    layer: l.owner,
  }));
}

/** overlayfs refuses more lower layers than this. */
export const MAX_LOWERS = 500;

/** The overlay of layer `id` (upper/work dirs layers/<id>/{diff,work}), every path relative to `home`. */
export function overlaySpec(home: string, id: string, stack: readonly StackEntry[], indexOff: boolean): OverlayMount {
  const lowers = dedupeLowers(stack.map((s) => ({ overlay: s.rel, real: s.real })));
  if (lowers.length === 0) throw new InternalError(`layer ${id} has no lower layers to mount`);
  const rel = `layers/${id}`;
  return {
    target: `${home}/${rel}/merged`,
    lowers: lowers.map((l) => l.overlay),
    upper: `${rel}/diff`,
    work: `${rel}/work`,
    options: indexOff ? ['index=off'] : [],
    relativeTo: home,
  };
}
