/**
 * The one place where internal errors become graph driver plugin answers:
 * a non-200 status with `{"Err":"..."}`. dockerd shows the message as
 * `GraphDriver.<Method>: <message>`; the status only matters to other clients
 * (dockerd treats every non-200 the same, except a 404 on Capabilities).
 */
import { type ErrorKind, toThinError } from '../core/errors.js';

const STATUS: Record<ErrorKind, number> = {
  'invalid-argument': 400,
  'not-found': 404,
  'already-exists': 409,
  'failed-precondition': 412,
  unavailable: 503,
  internal: 500,
};

export function httpStatus(kind: ErrorKind): number {
  return STATUS[kind];
}

export interface HttpError {
  status: number;
  body: { Err: string };
  code: string;
}

/** Map anything thrown to a status and an `Err` body (never an empty message: dockerd would fall back to the raw body). */
export function toHttpError(e: unknown): HttpError {
  const t = toThinError(e);
  const msg = t.message.trim() === '' ? `${t.code} (no message)` : t.message;
  return { status: STATUS[t.kind], body: { Err: msg }, code: t.code };
}
