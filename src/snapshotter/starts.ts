/**
 * The snapshotter's adapter to the container starts both layer daemons share
 * (core/stack/starts.ts: traces, access-profile prefetch, recording): a
 * container's start is the Prepare of its active snapshot, done when the
 * Prepare answers; a thin image is a committed snapshot whose directory holds
 * the manifest; traces and profiles recorded on this node live in the root.
 * The images on the node are its thin snapshots: a profile recorded here is
 * kept while one of its stack is (core/stack/local-profiles.ts).
 */
import path from 'node:path';
import type { LayerStack } from '../core/stack/index.js';
import type { LiveStacks } from '../core/stack/local-profiles.js';
import { type StartOptions, Starts } from '../core/stack/starts.js';
import { noMetrics } from '../core/telemetry/metrics.js';
import { readThinLayer } from '../core/thin/layer.js';
import { stackId } from '../core/thin/profile.js';
import type { MetaStore } from './metastore.js';
import type { SnapshotterOptions } from './options.js';

export type { StartOptions };

export function openStarts(opts: SnapshotterOptions, root: string, store: MetaStore, stack: LayerStack): Promise<Starts> {
  const dir = (id: number) => path.join(root, 'snapshots', String(id));
  return Starts.open({
    ...opts.starts,
    daemon: 'snapshotter',
    root,
    stack,
    host: opts.host,
    log: opts.log,
    metrics: opts.metrics ?? noMetrics,
    fsDir: (n) => (store.get(n) ? dir(store.get(n)!.id) : null),
    liveStacks: liveStacks(store, stack, dir),
  });
}

/** The stacks of the thin snapshots, each snapshot's manifest read once (in slices: the event loop serves requests between them). */
function liveStacks(store: MetaStore, stack: LayerStack, dir: (id: number) => string): () => Promise<LiveStacks> {
  const known = new Map<number, { id: string; repository: string }>();
  return async () => {
    const stacks = new Map<string, string>();
    let complete = true;
    const thin = [...store.all()].filter((r) => r.source === 'thin');
    const ids = new Set(thin.map((r) => r.id));
    for (const id of known.keys()) if (!ids.has(id)) known.delete(id);
    let read = 0;
    for (const r of thin) {
      let s = known.get(r.id);
      if (s === undefined) {
        if (++read % 16 === 0) await new Promise<void>((res) => setImmediate(res));
        const m = (() => {
          try {
            return readThinLayer(dir(r.id), stack.location)?.manifest;
          } catch {
            return undefined;
          }
        })();
        if (!m) {
          // unreadable now (its stack unknown): no profile is taken as gone this time
          complete = false;
          continue;
        }
        s = { id: stackId(m.layers.map((l) => l.hex)), repository: m.layers.at(-1)!.repository };
        known.set(r.id, s);
      }
      stacks.set(s.id, s.repository);
    }
    return { stacks, complete };
  };
}
