/**
 * Typed errors shared by every part of cvmfs-thin. Each class has a stable
 * `code` string (like undici's UND_ERR_*), listed with its meaning in the
 * registry src/core/errors/codes.ts (a code not listed there does not compile;
 * table: docs/errors.md), and a `kind` that the edges map to a protocol status
 * in exactly one place each (gRPC: src/snapshotter/grpc-errors.ts and
 * src/csi/grpc-errors.ts, HTTP: src/edge/plugin-http.ts). The `kind` values
 * mirror containerd's errdefs classes, so a snapshotter answer means the same
 * thing as containerd's own.
 */
import type { ErrorCode } from './codes.js';

export type { ErrorCode } from './codes.js';

export type ErrorKind = 'invalid-argument' | 'not-found' | 'already-exists' | 'failed-precondition' | 'unavailable' | 'internal';

const BRAND = Symbol.for('cvmfs-thin.error');

export class ThinError extends Error {
  readonly kind: ErrorKind;
  readonly code: ErrorCode;
  readonly [BRAND] = true;
  constructor(kind: ErrorKind, code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.code = code;
    this.name = new.target.name;
  }
  static is(e: unknown): e is ThinError {
    return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[BRAND] === true;
  }
}

export class InvalidArgumentError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_INVALID_ARGUMENT', options?: { cause?: unknown }) {
    super('invalid-argument', code, message, options);
  }
}
export class NotFoundError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_NOT_FOUND', options?: { cause?: unknown }) {
    super('not-found', code, message, options);
  }
}
export class AlreadyExistsError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_ALREADY_EXISTS', options?: { cause?: unknown }) {
    super('already-exists', code, message, options);
  }
}
export class FailedPreconditionError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_FAILED_PRECONDITION', options?: { cause?: unknown }) {
    super('failed-precondition', code, message, options);
  }
}
export class UnavailableError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_UNAVAILABLE', options?: { cause?: unknown }) {
    super('unavailable', code, message, options);
  }
}
export class InternalError extends ThinError {
  constructor(message: string, code: ErrorCode = 'CVMFS_THIN_INTERNAL', options?: { cause?: unknown }) {
    super('internal', code, message, options);
  }
}

/** Thin-image manifest problems: always name the offending field. */
export class ThinManifestError extends InvalidArgumentError {
  readonly field: string;
  constructor(field: string, message: string) {
    super(`thin image manifest: ${field}: ${message}`, 'CVMFS_THIN_BAD_MANIFEST');
    this.field = field;
  }
}

/** Normalise anything thrown into a ThinError (unknown errors become internal). */
export function toThinError(e: unknown): ThinError {
  if (ThinError.is(e)) return e;
  const err = e instanceof Error ? e : new Error(String(e));
  return new InternalError(err.message, 'CVMFS_THIN_INTERNAL', { cause: err });
}
