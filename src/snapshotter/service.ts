/** gRPC edge: containerd.services.snapshots.v1.Snapshots → Snapshotter. */
import { type handleServerStreamingCall, type handleUnaryCall, type sendUnaryData, type ServerUnaryCall, status as GrpcStatus } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { InvalidArgumentError, toThinError } from '../core/errors/errors.js';
import { type Metrics, noMetrics, recordRequest } from '../core/telemetry/metrics.js';
import type { Mount } from '../core/stack/mounts.js';
import { parseFilters, snapshotAdaptor } from './filters.js';
import { toServiceError } from './grpc-errors.js';
import { listBatches } from './list-batches.js';
import type { Time } from './metastore.js';
import type { Empty } from './proto/google/protobuf/empty.js';
import {
  type Info as PbInfo,
  Kind as PbKind,
  type ListSnapshotsRequest,
  type ListSnapshotsResponse,
  type SnapshotsServer,
} from './proto/containerd/services/snapshots/v1/snapshots.js';
import type { Mount as PbMount } from './proto/containerd/types/mount.js';
import type { Info, Snapshotter } from './snapshotter.js';

const KIND: Record<Info['kind'], PbKind> = { view: PbKind.VIEW, active: PbKind.ACTIVE, committed: PbKind.COMMITTED };

const ts = (t: Time) => ({ seconds: t[0], nanos: t[1] });

export function toPbInfo(i: Info): PbInfo {
  return { name: i.name, parent: i.parent, kind: KIND[i.kind], createdAt: ts(i.created), updatedAt: ts(i.updated), labels: i.labels };
}

const toPbMounts = (ms: Mount[]): PbMount[] => ms.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options }));

/** Errors that mean a CVMFS directory was not reachable (cvmfs_unavailable_total). */
const CVMFS_UNAVAILABLE = new Set(['CVMFS_THIN_LAYER_UNAVAILABLE', 'CVMFS_THIN_CVMFS_STALLED']);

export function createService(sn: Snapshotter, log: Logger, metrics: Metrics = noMetrics): SnapshotsServer {
  const record = (method: string, started: bigint, e?: unknown): ReturnType<typeof toServiceError> | undefined => {
    if (e === undefined) {
      recordRequest(metrics, 'snapshotter', method, started, 'OK');
      return undefined;
    }
    const err = toServiceError(e);
    recordRequest(metrics, 'snapshotter', method, started, GrpcStatus[err.code] ?? 'UNKNOWN');
    if (metrics.enabled && CVMFS_UNAVAILABLE.has(toThinError(e).code)) metrics.inc('cvmfs_unavailable_total', { daemon: 'snapshotter' });
    return err;
  };
  function unary<Req, Res>(method: string, describe: (r: Req) => Record<string, unknown>, fn: (r: Req) => Promise<Res> | Res): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      const t0 = performance.now();
      const started = metrics.enabled ? process.hrtime.bigint() : 0n;
      const ok = (res: Res) => {
        // at: when the call reached the handler (ms since the epoch, µs resolution: bench/snapshotter-p99.ts)
        if (log.isLevelEnabled('debug'))
          log.debug({ method, ...describe(call.request), at: +(performance.timeOrigin + t0).toFixed(3), ms: +(performance.now() - t0).toFixed(3) }, 'rpc');
        record(method, started);
        cb(null, res);
      };
      const fail = (e: unknown) => {
        const err = record(method, started, e)!;
        const t = toThinError(e);
        const lvl = t.kind === 'internal' ? 'error' : 'debug';
        log[lvl]({ method, ...describe(call.request), code: err.code, err: t.kind === 'internal' ? e : t.message }, 'rpc failed');
        cb(err, null);
      };
      let r: Promise<Res> | Res;
      try {
        r = fn(call.request);
      } catch (e) {
        fail(e);
        return;
      }
      if (r instanceof Promise) r.then(ok, fail);
      else ok(r);
    };
  }

  const list: handleServerStreamingCall<ListSnapshotsRequest, ListSnapshotsResponse> = (call) => {
    const started = metrics.enabled ? process.hrtime.bigint() : 0n;
    try {
      const f = parseFilters(call.request.filters);
      const infos = sn.list((i) => f(snapshotAdaptor(i)));
      for (const info of listBatches(infos.map(toPbInfo))) call.write({ info });
      log.debug({ method: 'List', filters: call.request.filters, n: infos.length }, 'rpc');
      record('List', started);
      call.end();
    } catch (e) {
      const err = record('List', started, e)!;
      log.debug({ method: 'List', filters: call.request.filters, code: err.code, err: err.message }, 'rpc failed');
      call.emit('error', err);
    }
  };

  const empty: Empty = {};
  return {
    prepare: unary(
      'Prepare',
      (r) => ({ key: r.key, parent: r.parent, labels: r.labels }),
      async (r) => ({ mounts: toPbMounts(await sn.prepare(r.key, r.parent, r.labels)) }),
    ),
    view: unary(
      'View',
      (r) => ({ key: r.key, parent: r.parent }),
      async (r) => ({ mounts: toPbMounts(await sn.view(r.key, r.parent, r.labels)) }),
    ),
    mounts: unary(
      'Mounts',
      (r) => ({ key: r.key }),
      async (r) => ({ mounts: toPbMounts(await sn.mounts(r.key)) }),
    ),
    commit: unary(
      'Commit',
      (r) => ({ name: r.name, key: r.key }),
      async (r) => {
        await sn.commit(r.name, r.key, r.labels, r.parent);
        return empty;
      },
    ),
    remove: unary(
      'Remove',
      (r) => ({ key: r.key }),
      async (r) => {
        await sn.remove(r.key);
        return empty;
      },
    ),
    stat: unary(
      'Stat',
      (r) => ({ key: r.key }),
      (r) => ({ info: toPbInfo(sn.stat(r.key)) }),
    ),
    update: unary(
      'Update',
      (r) => ({ name: r.info?.name, paths: r.updateMask }),
      async (r) => {
        if (!r.info) throw new InvalidArgumentError('update request carries no snapshot info');
        return { info: toPbInfo(await sn.update({ name: r.info.name, labels: r.info.labels }, r.updateMask ?? [])) };
      },
    ),
    list,
    usage: unary(
      'Usage',
      (r) => ({ key: r.key }),
      async (r) => {
        const u = await sn.usage(r.key);
        return { size: u.size, inodes: u.inodes };
      },
    ),
    cleanup: unary(
      'Cleanup',
      () => ({}),
      async () => {
        await sn.cleanup();
        return empty;
      },
    ),
  };
}
