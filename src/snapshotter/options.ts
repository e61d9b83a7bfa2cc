/** The snapshotter's options and the snapshot info it answers (snapshotter.ts). */
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import type { Host } from '../core/host/host.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { Kind, Time } from './metastore.js';
import type { StartOptions } from './starts.js';

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  created: Time;
  updated: Time;
  labels: Record<string, string>;
}

export interface SnapshotterOptions {
  root: string;
  location: CvmfsLocation;
  /** Side effects on the node (systemHost in the daemon, a recording host in tests). */
  host: Host;
  /** Recognise thin images (default true). */
  thinImages?: boolean;
  /** Serve layers found in CVMFS as remote snapshots (default true). */
  remoteLayers?: boolean;
  log: Logger;
  /** Called when the metadata store cannot commit: the process must stop. */
  onFatal?: (e: Error) => void;
  /** The socket served, recorded in the root's lock file (who holds the root). */
  address?: string;
  /** Default: records nothing. */
  metrics?: Metrics | undefined;
  /** Deadline of every question to CVMFS (default 10 s: `cvmfs-timeout`). */
  cvmfsTimeoutMs?: number | undefined;
  /** Period of the check of running containers on a dead CVMFS (default 30 s, 0: only on demand: `check-interval`). */
  checkIntervalMs?: number | undefined;
  /** Container starts: access-profile prefetch and recording, the slow-start budget. */
  starts?: StartOptions | undefined;
}
