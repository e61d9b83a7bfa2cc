/**
 * The error policy of every edge: wherever an error leaves cvmfs-thin, its
 * stable `CVMFS_THIN_*` code goes with it, beside a message that stays what
 * each peer already shows. Anything thrown that is not ours (a plain Error, an
 * errno error) has the generic code CVMFS_THIN_INTERNAL.
 *
 *   - log lines about a failed call: the pino field `code` (and the protocol
 *     status: `status`, the gRPC status name or the HTTP status);
 *   - gRPC (snapshotter, CSI): the trailing metadata key `cvmfs-thin-code`;
 *     the status message is unchanged (containerd and kubelet show it);
 *   - Docker plugins (volume driver, graph driver): `{"Err": message, "Code": code}`;
 *     dockerd reads `Err` only and matches no text in it;
 *   - FlexVolume: `{"status": "Failure", "message": message, "code": code}`
 *     (kubelet ignores fields it does not know; "Not supported" answers carry no code);
 *   - the CLI: `cvmfs-thin: <message> (<code>)` on stderr, exit codes unchanged.
 *
 * docs/errors.md (scripts/gen-errors-doc.ts) tells users the same. This module
 * loads nothing but the errors: the CLI and the FlexVolume driver use it.
 */
import { type ErrorCode, ThinError } from '../core/errors/errors.js';

/** gRPC: the trailing metadata key that carries the code. */
export const CODE_METADATA_KEY = 'cvmfs-thin-code';

/** The code of anything thrown that is not ours. */
export const GENERIC_CODE: ErrorCode = 'CVMFS_THIN_INTERNAL';

/** The code of anything thrown. */
export function errorCode(e: unknown): ErrorCode {
  return ThinError.is(e) ? e.code : GENERIC_CODE;
}

/** Human-readable text: the message, then the code (`… (CVMFS_THIN_NOT_FOUND)`). */
export function withCode(message: string, code: string): string {
  return `${message} (${code})`;
}

/**
 * What the CLI prints for a failure (without the `cvmfs-thin: ` prefix and the
 * newline). Errors that are not ours are bugs or surprises: their stack follows.
 */
export function cliErrorText(e: unknown): string {
  if (ThinError.is(e)) return withCode(e.message, e.code);
  if (!(e instanceof Error)) return withCode(String(e), GENERIC_CODE);
  const head = withCode(e.message, GENERIC_CODE);
  const frames = e.stack?.split('\n').filter((l) => /^\s+at /.test(l)) ?? [];
  return frames.length ? `${head}\n${frames.join('\n')}` : head;
}
