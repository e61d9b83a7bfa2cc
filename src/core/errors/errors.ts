/**
 * Typed errors shared by every part of cvmfs-thin. Each class has a stable
 * `code` string (like undici's UND_ERR_*), listed with its meaning and kind in
 * the registry src/core/errors/codes.ts (table: docs/errors.md). A class
 * accepts only `CodeOf<its kind>`: a code that is not listed, or is listed
 * with another kind, does not compile. The `kind` is what the edges map to a protocol status
 * in exactly one place each (gRPC: src/snapshotter/grpc-errors.ts and
 * src/csi/grpc-errors.ts, HTTP: src/edge/plugin-http.ts). The `kind` values
 * mirror containerd's errdefs classes, so a snapshotter answer means the same
 * thing as containerd's own.
 */
import type { CodeOf } from './codes.js';

export type { CodeOf, ErrorCode } from './codes.js';

export type ErrorKind = 'invalid-argument' | 'not-found' | 'already-exists' | 'failed-precondition' | 'unavailable' | 'internal';

const BRAND = Symbol.for('cvmfs-thin.error');

/**
 * The base class. `K` is the kind: `new ThinError('not-found', code, …)` takes
 * only a not-found code; a kind and a code known only at run time (copied
 * from another error) give `ThinError<ErrorKind>`, which takes any code.
 */
export class ThinError<K extends ErrorKind = ErrorKind> extends Error {
  readonly kind: K;
  readonly code: CodeOf<K>;
  readonly [BRAND] = true;
  constructor(kind: K, code: CodeOf<K>, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.code = code;
    this.name = new.target.name;
  }
  static is(e: unknown): e is ThinError {
    return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[BRAND] === true;
  }
}

export class InvalidArgumentError extends ThinError<'invalid-argument'> {
  constructor(message: string, code: CodeOf<'invalid-argument'> = 'CVMFS_THIN_INVALID_ARGUMENT', options?: { cause?: unknown }) {
    super('invalid-argument', code, message, options);
  }
}
export class NotFoundError extends ThinError<'not-found'> {
  constructor(message: string, code: CodeOf<'not-found'> = 'CVMFS_THIN_NOT_FOUND', options?: { cause?: unknown }) {
    super('not-found', code, message, options);
  }
}
export class AlreadyExistsError extends ThinError<'already-exists'> {
  constructor(message: string, code: CodeOf<'already-exists'> = 'CVMFS_THIN_ALREADY_EXISTS', options?: { cause?: unknown }) {
    super('already-exists', code, message, options);
  }
}
export class FailedPreconditionError extends ThinError<'failed-precondition'> {
  constructor(message: string, code: CodeOf<'failed-precondition'> = 'CVMFS_THIN_FAILED_PRECONDITION', options?: { cause?: unknown }) {
    super('failed-precondition', code, message, options);
  }
}
export class UnavailableError extends ThinError<'unavailable'> {
  constructor(message: string, code: CodeOf<'unavailable'> = 'CVMFS_THIN_UNAVAILABLE', options?: { cause?: unknown }) {
    super('unavailable', code, message, options);
  }
}
export class InternalError extends ThinError<'internal'> {
  constructor(message: string, code: CodeOf<'internal'> = 'CVMFS_THIN_INTERNAL', options?: { cause?: unknown }) {
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
