/**
 * The snapshotter's adapter to the container starts both layer daemons share
 * (core/stack/starts.ts: traces, access-profile prefetch, recording): a
 * container's start is the Prepare of its active snapshot, done when the
 * Prepare answers; a thin image is a committed snapshot whose directory holds
 * the manifest; traces and profiles recorded on this node live in the root.
 */
import path from 'node:path';
import type { LayerStack } from '../core/stack/index.js';
import { type StartOptions, Starts } from '../core/stack/starts.js';
import { noMetrics } from '../core/telemetry/metrics.js';
import type { MetaStore } from './metastore.js';
import type { SnapshotterOptions } from './options.js';

export type { StartOptions };

export function openStarts(opts: SnapshotterOptions, root: string, store: MetaStore, stack: LayerStack): Promise<Starts> {
  return Starts.open({
    ...opts.starts,
    daemon: 'snapshotter',
    root,
    stack,
    host: opts.host,
    log: opts.log,
    metrics: opts.metrics ?? noMetrics,
    fsDir: (n) => (store.get(n) ? path.join(root, 'snapshots', String(store.get(n)!.id)) : null),
  });
}
