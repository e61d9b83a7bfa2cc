/**
 * The one place where internal errors become gRPC statuses for CSI. The same
 * table as src/snapshotter/grpc-errors.ts except `internal`: containerd folds
 * every unknown code into ErrUnknown, while CSI's COs read INTERNAL as a
 * plugin fault to retry.
 */
import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { type ErrorKind, toThinError } from '../core/errors/errors.js';

const CODES: Record<ErrorKind, status> = {
  'invalid-argument': status.INVALID_ARGUMENT,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  internal: status.INTERNAL,
};

export function csiCode(kind: ErrorKind): status {
  return CODES[kind];
}

function serviceError(code: status, message: string): ServiceError {
  const err = new Error(message) as ServiceError;
  err.code = code;
  err.details = message;
  err.metadata = new Metadata();
  return err;
}

export function toServiceError(e: unknown): ServiceError {
  const t = toThinError(e);
  return serviceError(CODES[t.kind], t.message);
}

/** RPCs the plugin does not offer (their capability is not advertised). */
export function unimplemented(method: string, why: string): ServiceError {
  return serviceError(status.UNIMPLEMENTED, `${method} is not implemented: ${why}`);
}
