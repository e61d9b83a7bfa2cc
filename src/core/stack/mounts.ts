/**
 * Mount computation, pure, modelled on containerd's snapshots/overlay
 * `mounts()`: what a snapshot mounts as, given its own directories and the
 * lower directories (top first) of its parent chain.
 */
import { InvalidArgumentError } from '../errors/errors.js';

export interface Mount {
  type: string;
  source: string;
  options: string[];
}

interface LowerDir {
  /** Path used in overlay `lowerdir=` (a short link inside the state directory). */
  overlay: string;
  /** Real directory, used when the lower is bind-mounted on its own. */
  real: string;
}

interface MountSpec {
  /** View (read-only) or active (read-write). */
  readonly: boolean;
  /** The snapshot's own directory: overlay upperdir (active) or the bind source when there are no lowers. */
  fs: string;
  /** overlay workdir (active snapshots). */
  work?: string | undefined;
  /** Lower directories, nearest first. */
  lowers: readonly LowerDir[];
  /** Add `index=off` (containerd and moby do when the overlay module has the `index` parameter: Host.overlayIndexParam). */
  indexOff: boolean;
}

/** Characters that cannot appear in an overlay option path without escaping. */
const OVERLAY_UNSAFE = /[:,\n\0]/;

export function checkOverlayPath(p: string, what: string): void {
  if (OVERLAY_UNSAFE.test(p)) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(p)} contains ':' or ',' and cannot be used in overlay mount options`, 'CVMFS_THIN_MOUNT');
  }
}

/** Drop repeated lower directories, keeping the topmost (a layer repeated lower down adds nothing). */
export function dedupeLowers(lowers: readonly LowerDir[]): LowerDir[] {
  const seen = new Set<string>();
  const out: LowerDir[] = [];
  for (const l of lowers) {
    if (seen.has(l.real)) continue;
    seen.add(l.real);
    out.push(l);
  }
  return out;
}

export function computeMounts(spec: MountSpec): Mount[] {
  const lowers = dedupeLowers(spec.lowers);
  if (lowers.length === 0) {
    return [{ type: 'bind', source: spec.fs, options: [spec.readonly ? 'ro' : 'rw', 'rbind'] }];
  }
  if (spec.readonly && lowers.length === 1) {
    return [{ type: 'bind', source: lowers[0]!.real, options: ['ro', 'rbind'] }];
  }
  const opts: string[] = [];
  if (spec.indexOff) opts.push('index=off');
  for (const l of lowers) checkOverlayPath(l.overlay, 'lower directory');
  if (!spec.readonly) {
    if (!spec.work) throw new InvalidArgumentError('an active snapshot needs a work directory');
    checkOverlayPath(spec.work, 'work directory');
    checkOverlayPath(spec.fs, 'upper directory');
    opts.push(`workdir=${spec.work}`, `upperdir=${spec.fs}`);
  }
  opts.push(`lowerdir=${lowers.map((l) => l.overlay).join(':')}`);
  return [{ type: 'overlay', source: 'overlay', options: opts }];
}
