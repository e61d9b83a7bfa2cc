/**
 * The parent-chain walk both daemons need, pure: a snapshot (containerd) or a
 * layer (dockerd) mounts the lower directories its ancestors contribute,
 * nearest first, down to the base — or down to a terminal ancestor whose
 * contribution is complete by itself (a thin image's CVMFS layers, a DUCC
 * chain), below which the walk stops.
 */
import { InternalError } from '../errors/errors.js';

/** What one ancestor contributes. */
export interface ChainNode {
  parent: string;
  /** Its lower directories, top first: a short-link name and the real directory. */
  lowers: readonly { link: string; real: string }[];
  /** A CVMFS layer or mask (not a local directory of ours). */
  external: boolean;
  /** Complete by itself: do not descend to the parent. */
  terminal: boolean;
}

export interface ChainLower {
  /** Short-link name (the caller chooses the directory it lives in). */
  link: string;
  real: string;
  external: boolean;
  /** The ancestor that contributed the entry. */
  owner: string;
}

/** Lower directories of a child of `parent`, nearest first; throws on a loop or a missing ancestor. */
export function chainLowers(get: (name: string) => ChainNode | undefined, parent: string, noun = 'snapshot'): ChainLower[] {
  const out: ChainLower[] = [];
  const seen = new Set<string>();
  for (let n = parent; n !== '';) {
    if (seen.has(n)) throw new InternalError(`parent chain of ${parent} loops at ${n}`, 'CVMFS_THIN_BAD_STATE');
    seen.add(n);
    const node = get(n);
    if (!node) throw new InternalError(`parent chain of ${parent} is broken: ${noun} ${n} is missing`, 'CVMFS_THIN_BAD_STATE');
    for (const l of node.lowers) out.push({ link: l.link, real: l.real, external: node.external, owner: n });
    if (node.terminal) break;
    n = node.parent;
  }
  return out;
}
