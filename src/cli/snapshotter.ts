/**
 * `cvmfs-thin snapshotter`: the containerd proxy snapshotter daemon; run by
 * systemd (packaging/systemd/cvmfs-thin-snapshotter.service) or the
 * Kubernetes DaemonSet (packaging/kubernetes/snapshotter/).
 */
import { Command } from 'commander';
import type { Field } from '../edge/settings.js';
import { type RunningDaemon, startSnapshotter } from '../snapshotter/server.js';
import {
  addCvmfsOptions,
  cvmfsKeys,
  addMetricsOption,
  maybeStartMetrics,
  readiness,
  daemonSettings,
  serveWithMetrics,
  wholeNumber,
  zeroOrMore,
} from './daemon-common.js';

export const SNAPSHOTTER_DEFAULTS = {
  address: '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock',
  root: '/var/lib/containerd-cvmfs-grpc',
};

/** Keys of the snapshotter's TOML file: containerd-cvmfs-grpc's two keys, plus ours. */
export const snapshotterConfigSpec = {
  ...cvmfsKeys,
  address: { type: 'string' },
  root: { type: 'string' },
  'thin-images': { type: 'boolean' },
  'remote-layers': { type: 'boolean' },
  prefetch: { type: 'boolean' },
  'record-profiles': { type: 'boolean' },
  'record-window': { type: 'integer', min: 1, max: 600 },
  'start-budget': { type: 'integer', min: 1, max: 3_600_000 },
  'hot-wait': { type: 'integer', min: 0, max: 60_000 },
  'hot-image': { type: 'boolean' },
  'metrics-address': { type: 'string' },
} as const satisfies Record<string, Field>;

export function snapshotterCommand(): Command {
  const cmd = new Command('snapshotter')
    .description('serve the containerd Snapshots API (proxy_plugins snapshotter) with CVMFS thin images and remote layers')
    .option('--address <path>', `unix socket to listen on (default ${SNAPSHOTTER_DEFAULTS.address})`)
    .option('--root <dir>', `state directory (default ${SNAPSHOTTER_DEFAULTS.root})`)
    .option('--config <file>', `TOML configuration (keys: ${Object.keys(snapshotterConfigSpec).join(', ')})`);
  addCvmfsOptions(cmd)
    .option('--no-thin-images', 'do not recognise thin images')
    .option('--no-remote-layers', 'do not serve CRI-labelled layers from CVMFS')
    .option('--no-prefetch', "do not read an image's access profile ahead when its container is prepared")
    .option(
      '--hot-wait <ms>',
      "how long pulling a thin image waits for its hot layer: the files its profile's pack holds, unpacked locally above its layers (default 1500; 0: no hot layers)",
      zeroOrMore,
    )
    .option('--no-hot-image', "do not mount a profile's EROFS image from CVMFS as the hot layer: unpack its pack instead")
    .option(
      '--record-profiles',
      'record an access profile (fanotify) from the first start of an image that has none, into <root>/profiles (publish with cvmfs-thin profile publish)',
    )
    .option('--record-window <seconds>', 'how long a start is recorded (default 10)', wholeNumber)
    .option('--start-budget <ms>', 'log why a start took longer than this (its phases, what CVMFS fetched); see cvmfs-thin why-slow', wholeNumber);
  return addMetricsOption(cmd).action(async (o: Record<string, unknown>, c: Command) => {
    const s = daemonSettings(o, c, snapshotterConfigSpec, 'cvmfs-thin-snapshotter');
    const address = s.pick<string>('address', 'address') ?? SNAPSHOTTER_DEFAULTS.address;
    let daemon: RunningDaemon | undefined;
    const mountpoint = s.location.absoluteMountpoint;
    const m = await maybeStartMetrics(s.pick<string>('metricsAddress', 'metrics-address'), s.log, {
      live: { store: () => (daemon === undefined ? 'starting' : daemon.snapshotter.isOpen ? null : 'store closed') },
      ready: readiness(address, mountpoint, s.cvmfsTimeoutMs ?? null, s.log),
    });
    daemon = await serveWithMetrics(m, s.log, () =>
      startSnapshotter({
        address,
        root: s.pick<string>('root', 'root') ?? SNAPSHOTTER_DEFAULTS.root,
        location: s.location,
        thinImages: s.enabled('thinImages', 'thin-images'),
        remoteLayers: s.enabled('remoteLayers', 'remote-layers'),
        log: s.log,
        metrics: m.metrics,
        cvmfsTimeoutMs: s.cvmfsTimeoutMs,
        checkIntervalMs: s.checkIntervalMs,
        starts: {
          prefetch: s.enabled('prefetch', 'prefetch'),
          record: s.pick<boolean>('recordProfiles', 'record-profiles') ?? false,
          recordWindowMs: (s.pick<number>('recordWindow', 'record-window') ?? 10) * 1000,
          budgetMs: s.pick<number>('startBudget', 'start-budget'),
          hotWaitMs: s.pick<number>('hotWait', 'hot-wait'),
          hotImage: s.enabled('hotImage', 'hot-image'),
        },
      }),
    );
  });
}
