/** gRPC edge: csi.v1.Identity and csi.v1.Node → CsiNode. Secrets are never logged. */
import { readFileSync } from 'node:fs';
import { type handleUnaryCall, type sendUnaryData, type ServerUnaryCall, type ServiceError, status as GrpcStatus } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { toThinError } from '../core/errors/errors.js';
import { type Metrics, noMetrics, recordRequest } from '../core/telemetry/metrics.js';
import { toServiceError, unimplemented } from './grpc-errors.js';
import type { CsiNode } from './node.js';
import type { IdentityServer, NodeServer } from './proto/csi/v1/csi.js';

export const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** CSI plugin names: at most 63 characters, domain-name notation. */
export const DRIVER_NAME = /^[A-Za-z0-9](?:[-A-Za-z0-9.]{0,61}[A-Za-z0-9])?$/;

type Describe<Req> = (r: Req) => Record<string, unknown>;

function unaryFactory(log: Logger, metrics: Metrics) {
  return function unary<Req, Res>(method: string, describe: Describe<Req>, fn: (r: Req) => Promise<Res> | Res): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      const t0 = performance.now();
      const started = process.hrtime.bigint();
      const fail = (e: unknown) => {
        // already a gRPC status (UNIMPLEMENTED): ThinError codes are strings
        if (typeof (e as Partial<ServiceError>).code === 'number') {
          log.debug({ method, err: (e as Error).message }, 'rpc refused');
          recordRequest(metrics, 'csi', method, started, GrpcStatus[(e as ServiceError).code] ?? 'UNKNOWN');
          cb(e as ServiceError, null);
          return;
        }
        const err = toServiceError(e);
        recordRequest(metrics, 'csi', method, started, GrpcStatus[err.code] ?? 'UNKNOWN');
        const t = toThinError(e);
        const fields = { method, ...safeDescribe(describe, call.request), code: err.code, ms: +(performance.now() - t0).toFixed(2) };
        if (t.kind === 'internal') log.error({ ...fields, err: e }, 'rpc failed');
        else log.warn({ ...fields, err: t.message, errCode: t.code }, 'rpc failed');
        cb(err, null);
      };
      let r: Promise<Res> | Res;
      try {
        r = fn(call.request);
      } catch (e) {
        fail(e);
        return;
      }
      const ok = (res: Res) => {
        if (log.isLevelEnabled('debug')) log.debug({ method, ...safeDescribe(describe, call.request), ms: +(performance.now() - t0).toFixed(2) }, 'rpc');
        recordRequest(metrics, 'csi', method, started, 'OK');
        cb(null, res);
      };
      if (r instanceof Promise) r.then(ok, fail);
      else ok(r);
    };
  };
}

function safeDescribe<Req>(d: Describe<Req>, r: Req): Record<string, unknown> {
  try {
    return d(r);
  } catch {
    return {};
  }
}

export function createIdentityService(o: { driverName: string; ready: () => boolean; log: Logger; metrics?: Metrics | undefined }): IdentityServer {
  const unary = unaryFactory(o.log, o.metrics ?? noMetrics);
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

export function createNodeService(node: CsiNode, log: Logger, metrics: Metrics = noMetrics): NodeServer {
  const unary = unaryFactory(log, metrics);
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
    nodeExpandVolume: unary(
      'NodeExpandVolume',
      (r) => ({ volumeId: r.volumeId }),
      () => {
        throw unimplemented('NodeExpandVolume', 'CVMFS volumes are read-only and have no size (EXPAND_VOLUME is not advertised)');
      },
    ),
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
