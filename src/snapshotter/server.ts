/** The `cvmfs-thin snapshotter` daemon: gRPC on a unix socket, graceful, non-destructive stop. */
import type { StartOptions } from './starts.js';
import { promises as fsp } from 'node:fs';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import { type Host, systemHost } from '../core/host/host.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import { prepareSocket } from '../core/host/socket.js';
import { SnapshotsService } from './proto/containerd/services/snapshots/v1/snapshots.js';
import { createService } from './service.js';
import { Snapshotter } from './snapshotter.js';

export interface SnapshotterDaemonOptions {
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
  // channelz bookkeeping costs CPU on every call and nothing here reads it
  const server = new Server({ 'grpc.max_receive_message_length': MAX_MESSAGE, 'grpc.max_send_message_length': MAX_MESSAGE, 'grpc.enable_channelz': 0 });
  try {
    await prepareSocket(o.address);
    server.addService(SnapshotsService, createService(sn, log, o.metrics));
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${o.address}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    await fsp.chmod(o.address, 0o660);
  } catch (e) {
    // nothing of the store is removed; the root's lock is released
    server.forceShutdown();
    await sn.close();
    throw e;
  }
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
  let stopping: Promise<void> | null = null;
  return {
    snapshotter: sn,
    stop() {
      stopping ??= (async () => {
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 5000);
          server.tryShutdown(() => {
            clearTimeout(t);
            resolve();
          });
        });
        await sn.close();
        await fsp.rm(o.address, { force: true });
        log.info('snapshotter stopped; snapshot data kept');
      })();
      return stopping;
    },
  };
}
