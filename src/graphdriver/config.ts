/** The graph driver's settings (driver.ts): the plugin's flags and TOML keys, before dockerd's Init. */
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import type { Host } from '../core/host/host.js';
import type { StartOptions } from '../core/stack/starts.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import type { IdmapMode } from './options.js';

export interface GraphDriverConfig {
  /** Where the last Init is remembered. */
  stateDir: string;
  /** The plugin's own CVMFS settings (flags/TOML); Init.Opts override them. */
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
  /** Side effects on the node (systemHost in the daemon, a recording host in tests). */
  host: Host;
  log: Logger;
  /** The socket served, recorded in the lock files (who holds the state). */
  socket?: string;
  /** Deadline of questions to CVMFS (default 10 s), the check of mounted layers on a dead CVMFS (default 30 s), their metrics. */
  cvmfsTimeoutMs?: number | undefined;
  checkIntervalMs?: number | undefined;
  metrics?: Metrics | undefined;
  /** Container starts: access-profile prefetch, the slow-start budget (profiles are recorded by the snapshotter only). */
  starts?: Omit<StartOptions, 'record' | 'recordWindowMs'> | undefined;
}
