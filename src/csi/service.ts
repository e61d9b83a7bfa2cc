/** gRPC edge: csi.v1 Identity and csi.v1 Node → CsiNode (calls, statuses and logs: the kit in src/edge/grpc.ts). Secrets are never logged. */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Metrics } from '../core/telemetry/metrics.js';
import { grpcEdge } from '../edge/grpc.js';
import { CSI_STATUSES } from './grpc-errors.js';
import type { CsiNode } from './node.js';
import type { IdentityServer, NodeServer } from './proto/csi/v1/csi.js';

export const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** CSI plugin names: at most 63 characters, domain-name notation. */
export const DRIVER_NAME = /^[A-Za-z0-9](?:[-A-Za-z0-9.]{0,61}[A-Za-z0-9])?$/;

// a kubelet call that fails is worth a line
const csiEdge = (log: Logger, metrics: Metrics | undefined) => grpcEdge({ daemon: 'csi', log, metrics, statuses: CSI_STATUSES, refusedLevel: 'warn' });

export function createIdentityService(o: { driverName: string; ready: () => boolean; log: Logger; metrics?: Metrics | undefined }): IdentityServer {
  const { unary } = csiEdge(o.log, o.metrics);
  return {
    getPluginInfo: unary(
      'GetPluginInfo',
      () => ({}),
      () => ({ name: o.driverName, vendorVersion: VERSION, manifest: { implementation: 'cvmfs-thin' } }),
    ),
    // node only: no CONTROLLER_SERVICE, no topology constraints (every node can serve every repository)
    getPluginCapabilities: unary(
      'GetPluginCapabilities',
      () => ({}),
      () => ({ capabilities: [] }),
    ),
    probe: unary(
      'Probe',
      () => ({}),
      () => ({ ready: o.ready() }),
    ),
  };
}

export function createNodeService(node: CsiNode, log: Logger, metrics?: Metrics): NodeServer {
  const { unary, unimplemented } = csiEdge(log, metrics);
  const empty = {};
  // volume_context may hold clientConfig: log its keys only; never secrets
  const ctxKeys = (c: Record<string, string> | undefined) => Object.keys(c ?? {});
  return {
    nodeStageVolume: unary(
      'NodeStageVolume',
      (r) => ({ volumeId: r.volumeId, staging: r.stagingTargetPath, context: ctxKeys(r.volumeContext), repository: r.volumeContext?.['repository'] }),
      async (r) => {
        await node.stage(r);
        return empty;
      },
    ),
    nodeUnstageVolume: unary(
      'NodeUnstageVolume',
      (r) => ({ volumeId: r.volumeId, staging: r.stagingTargetPath }),
      async (r) => {
        await node.unstage(r);
        return empty;
      },
    ),
    nodePublishVolume: unary(
      'NodePublishVolume',
      (r) => ({
        volumeId: r.volumeId,
        target: r.targetPath,
        staging: r.stagingTargetPath,
        readonly: r.readonly,
        context: ctxKeys(r.volumeContext),
        repository: r.volumeContext?.['repository'],
      }),
      async (r) => {
        await node.publish(r);
        return empty;
      },
    ),
    nodeUnpublishVolume: unary(
      'NodeUnpublishVolume',
      (r) => ({ volumeId: r.volumeId, target: r.targetPath }),
      async (r) => {
        await node.unpublish(r);
        return empty;
      },
    ),
    nodeGetVolumeStats: unary(
      'NodeGetVolumeStats',
      (r) => ({ volumeId: r.volumeId, path: r.volumePath }),
      (r) => node.stats(r),
    ),
    nodeExpandVolume: unimplemented('NodeExpandVolume', 'CVMFS volumes are read-only and have no size (EXPAND_VOLUME is not advertised)'),
    nodeGetCapabilities: unary(
      'NodeGetCapabilities',
      () => ({}),
      () => node.capabilities(),
    ),
    nodeGetInfo: unary(
      'NodeGetInfo',
      () => ({}),
      () => node.info(),
    ),
  };
}
