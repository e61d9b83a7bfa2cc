/** The snapshotter's gRPC statuses (containerd errdefs semantics), served by the kit in src/edge/grpc.ts. */
import { status } from '@grpc/grpc-js';
import type { ErrorKind } from '../core/errors/errors.js';
import { type GrpcStatusTable, KIND_STATUS } from '../edge/grpc.js';

export const SNAPSHOTTER_STATUSES: GrpcStatusTable = {
  // containerd 1.6 maps every code it does not know to ErrUnknown anyway
  kinds: { ...KIND_STATUS, internal: status.UNKNOWN },
  // a full disk: containerd's errdefs.ErrResourceExhausted (containerd 1.6/1.7 show it as unknown, as before)
  codes: { CVMFS_THIN_IO_ENOSPC: status.RESOURCE_EXHAUSTED, CVMFS_THIN_IO_EDQUOT: status.RESOURCE_EXHAUSTED },
  // a raw errno error of a full disk (a mkdir or link in the root)
  errnos: { ENOSPC: status.RESOURCE_EXHAUSTED, EDQUOT: status.RESOURCE_EXHAUSTED },
};

export function grpcCode(kind: ErrorKind): status {
  return SNAPSHOTTER_STATUSES.kinds[kind];
}
