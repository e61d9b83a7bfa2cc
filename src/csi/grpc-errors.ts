/**
 * The CSI plugin's gRPC statuses, served by the kit in src/edge/grpc.ts: gRPC's
 * own meaning of each kind. Unlike the snapshotter's (containerd folds every
 * unknown code into ErrUnknown), `internal` is INTERNAL: CSI's COs read it as a
 * plugin fault to retry. The spec's FAILED_PRECONDITION / NOT_FOUND cases are
 * the errors' kinds (src/csi/node.ts, request.ts); calls a node-only driver
 * does not serve are UNIMPLEMENTED (the kit's `unimplemented`).
 */
import type { status } from '@grpc/grpc-js';
import type { ErrorKind } from '../core/errors/errors.js';
import { type GrpcStatusTable, KIND_STATUS } from '../edge/grpc.js';

export const CSI_STATUSES: GrpcStatusTable = { kinds: KIND_STATUS };

export function csiCode(kind: ErrorKind): status {
  return CSI_STATUSES.kinds[kind];
}
