/** gRPC edge: containerd.services.snapshots.v1.Snapshots → Snapshotter (calls, statuses and logs: the kit in src/edge/grpc.ts). */
import type { handleServerStreamingCall } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { type Metrics, noMetrics } from '../core/telemetry/metrics.js';
import type { Mount } from '../core/stack/mounts.js';
import { grpcEdge } from '../edge/grpc.js';
import { parseFilters, snapshotAdaptor } from './filters.js';
import { SNAPSHOTTER_STATUSES } from './grpc-errors.js';
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

function toPbInfo(i: Info): PbInfo {
  return { name: i.name, parent: i.parent, kind: KIND[i.kind], createdAt: ts(i.created), updatedAt: ts(i.updated), labels: i.labels };
}

const toPbMounts = (ms: Mount[]): PbMount[] => ms.map((m) => ({ type: m.type, source: m.source, target: '', options: m.options }));

/** Errors that mean a CVMFS directory was not reachable (cvmfs_unavailable_total). */
const CVMFS_UNAVAILABLE = new Set(['CVMFS_THIN_LAYER_UNAVAILABLE', 'CVMFS_THIN_CVMFS_STALLED']);

export function createService(sn: Snapshotter, log: Logger, metrics: Metrics = noMetrics): SnapshotsServer {
  const edge = grpcEdge({
    daemon: 'snapshotter',
    log,
    metrics,
    statuses: SNAPSHOTTER_STATUSES,
    // containerd asks for snapshots that do not exist as a matter of course
    refusedLevel: 'debug',
    onFailure: (t) => {
      if (metrics.enabled && CVMFS_UNAVAILABLE.has(t.code)) metrics.inc('cvmfs_unavailable_total', { daemon: 'snapshotter' });
    },
  });
  const unary = edge.unary;

  const list: handleServerStreamingCall<ListSnapshotsRequest, ListSnapshotsResponse> = (call) => {
    const start = edge.begin();
    try {
      const f = parseFilters(call.request.filters);
      const infos = sn.list((i) => f(snapshotAdaptor(i)));
      for (const info of listBatches(infos.map(toPbInfo))) call.write({ info });
      edge.succeeded('List', start, { filters: call.request.filters, n: infos.length });
      call.end();
    } catch (e) {
      call.emit('error', edge.failed('List', start, { filters: call.request.filters }, e));
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
        if (!r.info) throw new InvalidArgumentError('update request carries no snapshot info', 'CVMFS_THIN_BAD_REQUEST');
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
