/** The `cvmfs-thin snapshotter` daemon: gRPC on a unix socket, graceful, non-destructive stop. */
import type { StartOptions } from './starts.js';
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import { type Host, systemHost } from '../core/host/host.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import { serveGrpc } from '../edge/grpc.js';
import { SnapshotsService } from './proto/containerd/services/snapshots/v1/snapshots.js';
import { createService } from './service.js';
import { Snapshotter } from './snapshotter.js';

interface SnapshotterDaemonOptions {
  address: string;
  root: string;
  location: CvmfsLocation;
  thinImages: boolean;
  remoteLayers: boolean;
  log: Logger;
  /** Default: the real one. */
  host?: Host;
  /** Default: records nothing. */
  metrics?: Metrics | undefined;
  /** Deadline of questions to CVMFS (default 10 s). */
  cvmfsTimeoutMs?: number | undefined;
  /** Period of the check of running containers on a dead CVMFS (default 30 s, 0: never). */
  checkIntervalMs?: number | undefined;
  /** Container starts: profile prefetch and recording, the slow-start budget. */
  starts?: StartOptions | undefined;
}

export interface RunningDaemon {
  snapshotter: Snapshotter;
  /** Stop serving and close the store; never deletes or unmounts snapshot data. */
  stop(): Promise<void>;
}

/** containerd's proxy client allows 16 MiB messages. */
const MAX_MESSAGE = 16 << 20;

export async function startSnapshotter(o: SnapshotterDaemonOptions): Promise<RunningDaemon> {
  const log = o.log;
  let fatal = false;
  const sn = await Snapshotter.open({
    root: o.root,
    location: o.location,
    thinImages: o.thinImages,
    remoteLayers: o.remoteLayers,
    host: o.host ?? systemHost,
    address: o.address,
    log,
    metrics: o.metrics,
    cvmfsTimeoutMs: o.cvmfsTimeoutMs,
    checkIntervalMs: o.checkIntervalMs,
    starts: o.starts,
    onFatal: (e) => {
      if (fatal) return;
      fatal = true;
      log.fatal({ err: e }, 'metadata store failed to commit; stopping (the store on disk is consistent, restart to recover)');
      setImmediate(() => process.exit(70));
    },
  });
  const served = await serveGrpc({
    socket: o.address,
    options: { 'grpc.max_receive_message_length': MAX_MESSAGE, 'grpc.max_send_message_length': MAX_MESSAGE },
    services: () => [[SnapshotsService, createService(sn, log, o.metrics)]],
    // nothing of the store is removed; the root's lock is released
    close: () => sn.close(),
    onStopped: () => log.info('snapshotter stopped; snapshot data kept'),
  });
  log.info(
    {
      address: o.address,
      root: o.root,
      repository: o.location.repository,
      mountpoint: o.location.absoluteMountpoint,
      thinImages: o.thinImages,
      remoteLayers: o.remoteLayers,
    },
    'snapshotter serving',
  );
  // the CVMFS probe helper started now (~80 ms of process start), not by the first image's Commit
  void sn.cvmfsReady().then((why) => why && log.warn({ mountpoint: o.location.absoluteMountpoint, why }, 'CVMFS is not ready yet'));
  return { snapshotter: sn, stop: served.stop };
}
