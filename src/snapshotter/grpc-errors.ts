/** The one place where internal errors become gRPC statuses (containerd errdefs semantics). */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { type ErrorKind, toThinError } from '../core/errors/errors.js';

const CODES: Record<ErrorKind, status> = {
  'invalid-argument': status.INVALID_ARGUMENT,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  // containerd 1.6 maps every other code to ErrUnknown anyway
  internal: status.UNKNOWN,
};

export function grpcCode(kind: ErrorKind): status {
  return CODES[kind];
}

/** A full disk: containerd's errdefs.ErrResourceExhausted (containerd 1.6/1.7 show it as unknown, as before). */
const NO_SPACE = new Set(['CVMFS_THIN_IO_ENOSPC', 'CVMFS_THIN_IO_EDQUOT']);

export function toServiceError(e: unknown): ServiceError {
  const t = toThinError(e);
  const err = new Error(t.message) as ServiceError;
  err.code = NO_SPACE.has(t.code) || isNoSpaceErrno(e) ? status.RESOURCE_EXHAUSTED : CODES[t.kind];
  err.details = t.message;
  err.metadata = new Metadata();
  return err;
}

/** A raw errno error of a full disk (a mkdir or link in the root). */
function isNoSpaceErrno(e: unknown): boolean {
  const c = (e as NodeJS.ErrnoException | null)?.code;
  return c === 'ENOSPC' || c === 'EDQUOT';
}
