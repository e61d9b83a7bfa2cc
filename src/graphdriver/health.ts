/**
 * The graph driver's watch on CVMFS: mounted layers (containers) on a dead or
 * stalled CVMFS lower (core/stack/mount-health.ts), reported with their layer
 * IDs. Reads only.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { LayerStack } from '../core/stack/index.js';
import { DEFAULT_CHECK_INTERVAL_MS, MountMonitor } from '../core/stack/mount-health.js';

export function graphdriverMonitor(o: {
  home: string;
  stack: LayerStack;
  log: Logger;
  metrics?: Metrics | undefined;
  intervalMs?: number | undefined;
}): MountMonitor {
  const layers = path.join(o.home, 'layers');
  const monitor = new MountMonitor({
    daemon: 'graphdriver',
    root: o.home,
    host: o.stack.host,
    probe: o.stack.probe,
    log: o.log,
    metrics: o.metrics,
    intervalMs: o.intervalMs ?? DEFAULT_CHECK_INTERVAL_MS,
    // layers/<id>/merged is the mount of layer <id>
    describe: (ov): Record<string, string> =>
      path.basename(ov.mountPoint) === 'merged' && path.dirname(path.dirname(ov.mountPoint)) === layers
        ? { layer: path.basename(path.dirname(ov.mountPoint)) }
        : {},
  });
  monitor.start();
  return monitor;
}
