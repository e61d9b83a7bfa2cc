/** The one place where internal errors become gRPC statuses (containerd errdefs semantics). */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { type ErrorKind, toThinError } from '../core/errors.js';

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

export function toServiceError(e: unknown): ServiceError {
  const t = toThinError(e);
  const err = new Error(t.message) as ServiceError;
  err.code = CODES[t.kind];
  err.details = t.message;
  err.metadata = new Metadata();
  return err;
}
