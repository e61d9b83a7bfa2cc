/**
 * The one error class of the tar library for refused input: unsafe entries,
 * unsupported features, exceeded limits and malformed archives alike. `reason`
 * is a stable machine-readable discriminator; `entry` names the offending
 * entry as text (UTF-8, invalid bytes shown as U+FFFD), or '' when no entry is
 * known (e.g. a truncated header).
 */
import { InternalError, InvalidArgumentError } from '../errors/errors.js';

export type UnsafeTarReason =
  // names
  | 'path-escape' // cleaned name leaves dest ("../x")
  | 'nul-in-name' // NUL byte inside a PAX/GNU long name or link name
  | 'name-too-long' // over limits.maxNameBytes, or a component over 255 bytes
  | 'replace-root' // a non-directory entry whose name is dest itself ("." or "/")
  // resolution inside dest
  | 'symlink-loop' // too many symlinks while resolving a parent (ELOOP)
  | 'symlink-parent' // a parent resolves (in scope) through a symlink to nothing
  | 'parent-not-directory' // a parent component is an existing non-directory
  | 'hardlink-escape' // hardlink target name leaves dest
  | 'hardlink-target-missing' // hardlink target not (yet) extracted
  | 'hardlink-to-directory'
  | 'bad-whiteout' // ".wh.", ".wh..", ".wh..." or a whiteout used as a directory
  | 'unpublishable-name' // record mode: a name a CVMFS publisher would take for a whiteout (".WH.x")
  // unsupported content
  | 'sparse' // GNU sparse file (type 'S' or PAX GNU.sparse.*)
  | 'unsupported-type' // any type flag other than 0 1 2 3 4 5 6 7 x g L K
  | 'unmapped-id' // uid/gid outside the id maps
  // limits
  | 'pax-too-large'
  | 'too-many-entries'
  | 'too-large'
  // format
  | 'truncated'
  | 'bad-checksum'
  | 'bad-header'
  | 'bad-pax';

const UNSAFE_TAR_CODE = 'CVMFS_THIN_UNSAFE_TAR';

export class UnsafeTarError extends InvalidArgumentError {
  readonly entry: string;
  readonly reason: UnsafeTarReason;
  constructor(entry: string, reason: UnsafeTarReason, detail: string) {
    super(`${entry ? `tar entry ${JSON.stringify(entry)}` : 'tar'}: ${detail} (${reason})`, UNSAFE_TAR_CODE);
    this.entry = entry;
    this.reason = reason;
  }
}

/** Entry names are carried as latin1 "byte strings"; show them as UTF-8 text. */
function printableName(bstr: string): string {
  // fast path: pure ASCII is the same in both

  return /^[\x00-\x7f]*$/.test(bstr) ? bstr : Buffer.from(bstr, 'latin1').toString('utf8');
}

export function unsafe(bname: string, reason: UnsafeTarReason, detail: string): UnsafeTarError {
  return new UnsafeTarError(printableName(bname), reason, detail);
}

const TAR_IO_CODE = 'CVMFS_THIN_TAR_IO';

/**
 * A file system call failed while extracting or packing (ENOSPC, EACCES,
 * EROFS…). `errno` is the Node-style code ('ENOSPC'), `syscall` the call.
 */
export class TarIoError extends InternalError {
  readonly entry: string;
  readonly errno: string;
  readonly syscall: string;
  constructor(entry: string, errno: string, syscall: string, message: string, options?: { cause?: unknown }) {
    super(`${entry ? `tar entry ${JSON.stringify(entry)}` : 'tar'}: ${message}`, TAR_IO_CODE, options);
    this.entry = entry;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** Wrap a failed fs/sys call (anything not already a ThinError) with the entry it was for. */
export function ioError(bname: string, e: unknown): TarIoError {
  const err = e instanceof Error ? e : new Error(String(e));
  const x = err as Error & { code?: unknown; syscall?: unknown };
  return new TarIoError(printableName(bname), typeof x.code === 'string' ? x.code : 'EIO', typeof x.syscall === 'string' ? x.syscall : '', err.message, {
    cause: err,
  });
}
