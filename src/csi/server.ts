/**
 * The `cvmfs-thin csi` daemon: csi.v1 Identity + Node on a unix socket (the
 * endpoint kubelet's node-driver-registrar is pointed at). Stopping never
 * unmounts anything: published volumes keep working and a restarted plugin
 * takes them over from its journal.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { type Host, systemHost } from '../core/host/host.js';
import type { Metrics } from '../core/telemetry/metrics.js';
import { MountManager } from '../core/volumes/manager.js';
import type { Backend, MountManagerOptions } from '../core/volumes/types.js';
import { serveGrpc } from '../edge/grpc.js';
import { CsiNode } from './node.js';
import { IdentityService, NodeService } from './proto/csi/v1/csi.js';
import { createIdentityService, createNodeService, DRIVER_NAME } from './service.js';

export const CSI_DEFAULTS = {
  endpoint: 'unix:///csi/csi.sock',
  driverName: 'cvmfs.csi.cern.ch',
  stateDir: '/var/lib/cvmfs-thin/csi',
};

interface CsiDaemonOptions {
  /** `unix:///path`, `unix:/path` or an absolute path. */
  endpoint: string;
  driverName: string;
  nodeId: string;
  stateDir: string;
  cvmfsRoot: string;
  allow: MountManagerOptions['allow'];
  backend: Backend;
  mountCommand?: readonly string[] | undefined;
  clientConfigKeys?: readonly string[] | undefined;
  allowEphemeralClientConfig?: boolean | undefined;
  maxVolumesPerNode?: number | undefined;
  idleUnmountMs?: number | undefined;
  mountTimeoutMs?: number | undefined;
  /** Deadline of every question to CVMFS (default 10 s). */
  cvmfsTimeoutMs?: number | undefined;
  checkIntervalMs?: number | undefined;
  host?: Host | undefined;
  log: Logger;
  /** Requests, volumes and repairs are recorded here (default: nowhere). */
  metrics?: Metrics | undefined;
}

export interface RunningCsi {
  manager: MountManager;
  /** The socket path. */
  socket: string;
  /** Stop serving and close the journal; never unmounts or deletes anything. */
  stop(): Promise<void>;
}

/** The socket path of a CSI endpoint; only unix sockets are served. */
export function parseEndpoint(endpoint: string): string {
  let p = endpoint;
  if (p.startsWith('unix://')) p = p.slice('unix://'.length);
  else if (p.startsWith('unix:')) p = p.slice('unix:'.length);
  else if (/^[a-z][a-z0-9+.-]*:/i.test(p))
    throw new InvalidArgumentError(`endpoint ${JSON.stringify(endpoint)}: only unix sockets are supported (unix:///csi/csi.sock)`, 'CVMFS_THIN_BAD_FLAG');
  if (!path.isAbsolute(p))
    throw new InvalidArgumentError(`endpoint ${JSON.stringify(endpoint)}: the socket path must be absolute (unix:///csi/csi.sock)`, 'CVMFS_THIN_BAD_FLAG');
  return path.resolve(p);
}

export function checkDriverName(name: string): string {
  if (!DRIVER_NAME.test(name)) {
    throw new InvalidArgumentError(
      `driver name ${JSON.stringify(name)}: at most 63 characters, letters, digits, '-' and '.', starting and ending with a letter or digit (like cvmfs.csi.cern.ch)`,
      'CVMFS_THIN_BAD_FLAG',
    );
  }
  return name;
}

export function checkNodeId(id: string): string {
  if (id === '' || Buffer.byteLength(id) > 256 || /[\0-\x1f]/.test(id)) {
    throw new InvalidArgumentError(
      `node id ${JSON.stringify(id)}: 1-256 bytes without control characters (Kubernetes passes spec.nodeName)`,
      'CVMFS_THIN_BAD_FLAG',
    );
  }
  return id;
}

export async function startCsi(o: CsiDaemonOptions): Promise<RunningCsi> {
  const log = o.log;
  const socket = parseEndpoint(o.endpoint);
  checkDriverName(o.driverName);
  checkNodeId(o.nodeId);
  const host = o.host ?? systemHost;
  const manager = await MountManager.open({
    stateDir: path.resolve(o.stateDir),
    cvmfsRoot: o.cvmfsRoot,
    allow: o.allow,
    backend: o.backend,
    mountCommand: o.mountCommand,
    clientConfigKeys: o.clientConfigKeys,
    idleUnmountMs: o.idleUnmountMs,
    mountTimeoutMs: o.mountTimeoutMs,
    cvmfsTimeoutMs: o.cvmfsTimeoutMs,
    checkIntervalMs: o.checkIntervalMs,
    host,
    log,
    metrics: o.metrics,
    daemon: 'csi',
  });
  const served = await serveGrpc({
    socket,
    services: () => {
      const node = new CsiNode({
        manager,
        host,
        nodeId: o.nodeId,
        allowEphemeralClientConfig: o.allowEphemeralClientConfig,
        maxVolumesPerNode: o.maxVolumesPerNode,
        log,
      });
      return [
        [IdentityService, createIdentityService({ driverName: o.driverName, ready: () => true, log, metrics: o.metrics })],
        [NodeService, createNodeService(node, log, o.metrics)],
      ];
    },
    close: () => manager.close(),
    onStopped: () => log.info('csi plugin stopped; published volumes left mounted'),
  });
  log.info(
    {
      endpoint: socket,
      driver: o.driverName,
      nodeId: o.nodeId,
      stateDir: o.stateDir,
      cvmfsRoot: o.cvmfsRoot,
      backend: o.backend,
      allow: o.allow,
      volumes: manager.list().length,
    },
    'csi plugin serving',
  );
  return { manager, socket, stop: served.stop };
}
