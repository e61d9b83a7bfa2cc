/**
 * The Docker volume plugin protocol (docker.volumedriver/1.0): request
 * decoding. Pure: no I/O. dockerd sends Go-encoded JSON (CamelCase field
 * names, `Opts` is `null` from `run -v` and `{}` from `volume create`).
 */
import { InvalidArgumentError } from '../core/errors/errors.js';

/** Longest volume name accepted on the wire (a repository name is at most 253; a tag or hash adds at most 129). */
const MAX_VOLUME_NAME = 512;
/**
 * Mount IDs are random 64-hex strings from dockerd (one per mount point and
 * container start); other clients may use readable ones.
 */
const MOUNT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

function bad(message: string): InvalidArgumentError {
  return new InvalidArgumentError(message, 'CVMFS_THIN_BAD_REQUEST');
}

/** The `Name` field: a non-empty string (what it names is the mount manager's business). */
export function parseName(o: Record<string, unknown>): string {
  const v = o['Name'];
  if (v === undefined || v === null || v === '') {
    throw new InvalidArgumentError('volume name is empty: CVMFS volumes are named after their repository, e.g. cms.cern.ch', 'CVMFS_THIN_BAD_VOLUME');
  }
  if (typeof v !== 'string') throw bad('Name must be a string');
  if (v.length > MAX_VOLUME_NAME) {
    throw new InvalidArgumentError(`volume name "${v.slice(0, 64)}…" is ${v.length} characters long (at most ${MAX_VOLUME_NAME})`, 'CVMFS_THIN_BAD_VOLUME');
  }
  return v;
}

/** `Opts`: null/absent or an object of strings (`-o k=v`, `volume-opt=k=v`). */
export function parseOpts(o: Record<string, unknown>): Record<string, string> | null {
  const v = o['Opts'];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw bad('Opts must be an object or null');
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (typeof x !== 'string') throw bad(`Opts.${k} must be a string`);
    out[k] = x;
  }
  return out;
}

/** `ID` of Mount/Unmount. */
export function parseMountId(o: Record<string, unknown>): string {
  const v = o['ID'];
  if (typeof v !== 'string' || !MOUNT_ID.test(v)) {
    throw bad(`mount ID ${JSON.stringify(v ?? '')} is not valid (dockerd sends 64 hex digits; 1-128 characters of [A-Za-z0-9_.:-] are accepted)`);
  }
  return v;
}
