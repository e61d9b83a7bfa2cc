/** Labels and timestamps of snapshots, as containerd's snapshots/storage treats them. Pure. */
import { InvalidArgumentError } from '../core/errors/errors.js';
import type { Time } from './metastore.js';

export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
export const LABEL_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
export const LABEL_REMOTE = 'containerd.io/snapshot/remote';
/** containerd's labels.Validate limit. */
const MAX_LABEL_SIZE = 4096;
/**
 * Our cap on the key and value bytes of all labels of one snapshot (containerd
 * has none). containerd's own Snapshots service re-sends List replies in
 * batches of 100 infos under gRPC's 16 MiB message limit, so 100 snapshots'
 * labels must fit in 16 MiB: 128 KiB each (32 labels of the maximal size, far
 * more than CRI, nerdctl or stargz set) keeps every reply of ours and of
 * containerd's below the limit.
 */
export const MAX_LABELS_TOTAL = 128 << 10;

export function validateLabels(labels: Record<string, string>, of = 'snapshot'): void {
  let total = 0;
  for (const [k, v] of Object.entries(labels)) {
    const n = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (n > MAX_LABEL_SIZE) {
      throw new InvalidArgumentError(
        `label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 64)}`,
        'CVMFS_THIN_BAD_LABELS',
      );
    }
    total += n;
  }
  if (total > MAX_LABELS_TOTAL) {
    throw new InvalidArgumentError(
      `labels of ${of} total ${total} bytes (keys and values), more than the maximum of ${MAX_LABELS_TOTAL} bytes per snapshot`,
      'CVMFS_THIN_BAD_LABELS',
    );
  }
}

/** Labels with an empty value are not stored. */
export function cleanLabels(labels: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== '') out[k] = v;
  return out;
}

/** Update only touches labels: `labels` (all of them) or `labels.<key>`. */
export function checkUpdatePaths(name: string, paths: readonly string[]): void {
  for (const p of paths) {
    if (p !== 'labels' && !p.startsWith('labels.')) {
      throw new InvalidArgumentError(`cannot update ${JSON.stringify(p)} field on snapshot ${name}: only labels can be updated`, 'CVMFS_THIN_BAD_REQUEST');
    }
  }
}

/** The labels after an Update: all replaced (no paths, or `labels`), or the named keys set/removed. Validated. */
export function updatedLabels(
  current: Record<string, string>,
  labels: Record<string, string>,
  paths: readonly string[],
  of = 'snapshot',
): Record<string, string> {
  let next: Record<string, string>;
  if (paths.length === 0 || paths.includes('labels')) next = { ...labels };
  else {
    next = { ...current };
    for (const p of paths) {
      const k = p.slice('labels.'.length);
      const v = labels[k];
      if (v === undefined || v === '') delete next[k];
      else next[k] = v;
    }
  }
  next = cleanLabels(next);
  validateLabels(next, of);
  return next;
}

/**
 * Strictly increasing wall-clock timestamps with sub-microsecond resolution
 * (clients compare them with their own clock: Date.now()'s milliseconds are
 * too coarse). Re-anchored to the system clock if the two drift apart.
 */
export class Clock {
  private last = 0n;
  now(): Time {
    let ms = performance.timeOrigin + performance.now();
    const wall = Date.now();
    if (Math.abs(ms - wall) > 20) ms = wall;
    let t = BigInt(Math.floor(ms * 1000)) * 1000n;
    if (t <= this.last) t = this.last + 1n;
    this.last = t;
    return [Number(t / 1_000_000_000n), Number(t % 1_000_000_000n)];
  }
}
