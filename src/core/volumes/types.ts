/**
 * The repository mount manager's public shape, shared by the three volume
 * front-ends (Docker volume plugin, CSI node plugin, FlexVolume driver).
 */
import type { Logger } from 'pino';
import type { Host } from '../host/host.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { RepositoryAllowlist, VolumeSpec } from './spec.js';

/**
 * Where repositories come from.
 * - `host`: /cvmfs is provided by the host (autofs with auto.cvmfs, or plain
 *   mounts): the manager bind-mounts `<cvmfs-root>/<repo>` read-only (the
 *   access triggers the automount) and the bind keeps autofs from expiring it.
 * - `client`: the CVMFS client is installed: the manager mounts the repository
 *   privately with the mount helper (`mount -t cvmfs -o config=<file> <repo> <dir>`).
 * Volumes with a tag, hash, date or client settings always use the client.
 */
export type Backend = 'host' | 'client';

export interface MountManagerOptions {
  /** State: `mounts/<key>` (mount points), `client/<key>.conf`, `metadata/` (journal). */
  stateDir: string;
  /** Where the host's repositories are (`/cvmfs`). */
  cvmfsRoot: string;
  /** Repository allowlist: its patterns (exact names, `*.domain`, `*`), or the allowlist already parsed from them (the daemons' settings). */
  allow: readonly string[] | RepositoryAllowlist;
  backend: Backend;
  /** The client backend's mount command; `<repo> <dir>` and `-o config=<file>` are appended. Default `mount -t cvmfs`. */
  mountCommand?: readonly string[];
  /** Client config keys a volume may set. */
  clientConfigKeys?: readonly string[];
  /** Keep a repository mounted this long after its last holder left (ms; default 0 = unmount at once). */
  idleUnmountMs?: number;
  /** Health check period (ms; 0 = off; default 30 s). */
  checkIntervalMs?: number;
  /**
   * A backend mount must finish within this (ms; default 100 s, inside
   * dockerd's 2 minutes): the mount helper, and the first access of a
   * repository that autofs has yet to mount.
   */
  mountTimeoutMs?: number;
  /**
   * Deadline of every question to a mounted CVMFS (ms; default 10 s, the
   * snapshotter's `cvmfs-timeout`): a stalled client fails the request
   * within it (CVMFS_THIN_CVMFS_STALLED).
   */
  cvmfsTimeoutMs?: number | undefined;
  host: Host;
  log: Logger;
  /** Where to record volumes mounted, holders and repairs (default: nowhere). */
  metrics?: Metrics | undefined;
  /** The front-end's name in metrics (`volume-plugin`, `csi`, `flexvolume`). */
  daemon?: string | undefined;
}

/** One holder of a volume: a Docker mount ID, a CSI target or staging path, a FlexVolume dir. */
export interface Holder {
  /** Opaque, unique over all volumes: e.g. `docker:<64 hex>`, or the absolute target path for publish(). */
  id: string;
  /** For publish(): the path the volume is bind-mounted on. */
  target?: string | undefined;
  readonly: boolean;
  /** When it was added (ISO 8601). */
  since: string;
  /** Front-end data compared on repeated publishes (e.g. the CSI volume_id). */
  meta?: Record<string, string> | undefined;
}

export interface VolumeState {
  key: string;
  spec: VolumeSpec;
  backend: Backend | 'tree';
  /** Where the volume's content is on the host (the backend mount, or /cvmfs itself for the whole tree). */
  path: string;
  holders: Holder[];
  /** Backend mount present (always true for the whole tree). */
  mounted: boolean;
}

/** A Docker named volume's definition (Create's options), persisted. */
export interface Definition {
  name: string;
  spec: VolumeSpec;
  opts: Record<string, string>;
  createdAt: string;
}

/** Gauges for a metrics scrape: repository mounts by backend, and holders. */
export function recordGauges(metrics: Metrics, daemon: string, volumes: readonly VolumeState[]): void {
  const byBackend: Record<string, number> = { host: 0, client: 0, tree: 0 };
  let holders = 0;
  for (const v of volumes) {
    if (v.mounted) byBackend[v.backend] = (byBackend[v.backend] ?? 0) + 1;
    holders += v.holders.length;
  }
  for (const [backend, n] of Object.entries(byBackend)) metrics.set('volumes_mounted', { daemon, backend }, n);
  metrics.set('mounts_held', { daemon }, holders);
}
