/**
 * The snapshotter's watch on CVMFS: running containers on a dead or stalled
 * CVMFS lower (core/stack/mount-health.ts) reported with their snapshot
 * keys, and the repository mount's state at start. Reads only.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { LayerStack } from '../core/stack/index.js';
import { DEFAULT_CHECK_INTERVAL_MS, MountMonitor } from '../core/stack/mount-health.js';
import type { MetaStore } from './metastore.js';

export function snapshotterMonitor(o: {
  root: string;
  stack: LayerStack;
  store: MetaStore;
  log: Logger;
  metrics?: Metrics | undefined;
  intervalMs?: number | undefined;
}): MountMonitor {
  const snapshots = path.join(o.root, 'snapshots');
  const monitor = new MountMonitor({
    daemon: 'snapshotter',
    root: o.root,
    host: o.stack.host,
    probe: o.stack.probe,
    log: o.log,
    metrics: o.metrics,
    intervalMs: o.intervalMs ?? DEFAULT_CHECK_INTERVAL_MS,
    describe: (ov): Record<string, string> => {
      // the upper dir snapshots/<id> names the active snapshot
      if (!ov.upper || path.dirname(ov.upper) !== snapshots) return {};
      const id = Number(path.basename(ov.upper));
      for (const r of o.store.all()) if (r.id === id) return { snapshot: r.name };
      return {};
    },
  });
  return monitor;
}

/** Once open: start the periodic check, and say now (off the event loop) if the repository's mount is dead, stalled or missing. */
export function startWatching(monitor: MountMonitor, stack: LayerStack, log: Logger): void {
  monitor.start();
  void stack.cvmfsReady().then((why) => {
    if (why)
      log.warn(
        { path: stack.location.absoluteMountpoint, why },
        'CVMFS repository is not available; thin images and remote layers will not be available until it is',
      );
  });
}
