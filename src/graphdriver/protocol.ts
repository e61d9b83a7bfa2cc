/**
 * The Docker graph driver plugin protocol (docker.graphdriver/1.0): request
 * decoding and validation. Pure: no I/O. dockerd sends Go-encoded JSON with no
 * Content-Type; empty values are omitted, so every field is optional on the
 * wire and defaults here.
 */
import { InvalidArgumentError } from '../core/errors/errors.js';
import type { IdMap } from '../core/util/idmap.js';

/** Every endpoint a graph driver plugin serves (POST /<name>). */
export const METHODS = [
  'Plugin.Activate',
  'GraphDriver.Init',
  'GraphDriver.Capabilities',
  'GraphDriver.Status',
  'GraphDriver.Create',
  'GraphDriver.CreateReadWrite',
  'GraphDriver.Remove',
  'GraphDriver.Get',
  'GraphDriver.Put',
  'GraphDriver.Exists',
  'GraphDriver.GetMetadata',
  'GraphDriver.Cleanup',
  'GraphDriver.Diff',
  'GraphDriver.Changes',
  'GraphDriver.ApplyDiff',
  'GraphDriver.DiffSize',
] as const;
type Method = (typeof METHODS)[number];

export function isMethod(s: string): s is Method {
  return (METHODS as readonly string[]).includes(s);
}

/** One range of a user namespace mapping, as dockerd sends it in Init (the tar library's type). */
export type { IdMap };

export interface InitRequest {
  home: string;
  opts: string[];
  uidMaps: IdMap[];
  gidMaps: IdMap[];
}

/** Create, CreateReadWrite, Remove, Get, Put, Exists, GetMetadata, Diff, Changes, DiffSize. */
interface LayerRequest {
  id: string;
  parent: string;
  mountLabel: string;
  storageOpt: Record<string, string>;
}

/**
 * Layer IDs are dockerd cache IDs (64 hex, `-init` for a container's init
 * layer). Anything that could name a path outside the layer directory, or a
 * reserved name, is refused; the rule is wider than dockerd's so that other
 * clients can use readable names.
 */
const LAYER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export function validateLayerId(id: string, field = 'ID'): string {
  if (typeof id !== 'string' || !LAYER_ID.test(id)) {
    throw new InvalidArgumentError(
      `${field} ${JSON.stringify(id)} is not a valid layer ID (1-128 characters of [A-Za-z0-9_.-], starting with a letter or digit)`,
      'CVMFS_THIN_BAD_LAYER_ID',
    );
  }
  return id;
}

function str(o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') throw new InvalidArgumentError(`${key} must be a string`, 'CVMFS_THIN_BAD_REQUEST');
  return v;
}

function uint(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > 0xffffffff) {
    throw new InvalidArgumentError(`${field} must be an integer between 0 and 4294967295`, 'CVMFS_THIN_BAD_REQUEST');
  }
  return v;
}

/**
 * dockerd encodes idtools.IDMap with snake_case keys (`container_id`,
 * `host_id`, `size`); the plugin documentation spells them in CamelCase.
 * Accept both.
 */
export function parseIdMaps(v: unknown, field: string): IdMap[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new InvalidArgumentError(`${field} must be an array or null`, 'CVMFS_THIN_BAD_REQUEST');
  const out = v.map((m, i) => {
    const f = `${field}[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new InvalidArgumentError(`${f} must be an object`, 'CVMFS_THIN_BAD_REQUEST');
    const o = m as Record<string, unknown>;
    const pick = (snake: string, camel: string) => (o[snake] !== undefined ? o[snake] : o[camel]);
    const r: IdMap = {
      containerId: uint(pick('container_id', 'ContainerID'), `${f}.container_id`),
      hostId: uint(pick('host_id', 'HostID'), `${f}.host_id`),
      size: uint(pick('size', 'Size'), `${f}.size`),
    };
    if (r.size === 0) throw new InvalidArgumentError(`${f}.size must be at least 1`, 'CVMFS_THIN_BAD_REQUEST');
    if (r.containerId + r.size > 0x100000000 || r.hostId + r.size > 0x100000000) {
      throw new InvalidArgumentError(`${f} extends past the 32-bit id range`, 'CVMFS_THIN_BAD_REQUEST');
    }
    return r;
  });
  // ranges must not overlap on either side (the kernel refuses such uid_map files too)
  for (const side of ['containerId', 'hostId'] as const) {
    const sorted = [...out].sort((a, b) => a[side] - b[side]);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i - 1]![side] + sorted[i - 1]!.size > sorted[i]![side]) {
        throw new InvalidArgumentError(`${field}: ranges overlap`, 'CVMFS_THIN_BAD_REQUEST');
      }
    }
  }
  return out;
}

export function parseInitRequest(o: Record<string, unknown>): InitRequest {
  const home = str(o, 'Home');
  if (home === '' || !home.startsWith('/')) throw new InvalidArgumentError(`Home ${JSON.stringify(home)} must be an absolute path`, 'CVMFS_THIN_BAD_REQUEST');
  if (home.includes('\0')) throw new InvalidArgumentError('Home contains a NUL byte', 'CVMFS_THIN_BAD_REQUEST');
  const optsRaw = o['Opts'];
  let opts: string[] = [];
  if (optsRaw !== undefined && optsRaw !== null) {
    if (!Array.isArray(optsRaw) || !optsRaw.every((x) => typeof x === 'string')) {
      throw new InvalidArgumentError('Opts must be an array of strings or null', 'CVMFS_THIN_BAD_REQUEST');
    }
    opts = optsRaw as string[];
  }
  const uidMaps = parseIdMaps(o['UIDMaps'], 'UIDMaps');
  const gidMaps = parseIdMaps(o['GIDMaps'], 'GIDMaps');
  if ((uidMaps.length === 0) !== (gidMaps.length === 0)) {
    throw new InvalidArgumentError('UIDMaps and GIDMaps must both be set or both be empty', 'CVMFS_THIN_BAD_REQUEST');
  }
  return { home, opts, uidMaps, gidMaps };
}

/** Decode a layer request: the ID is mandatory; the parent, when present, is validated too. */
export function parseLayerRequest(o: Record<string, unknown>): LayerRequest {
  const id = validateLayerId(str(o, 'ID'));
  const parentRaw = str(o, 'Parent');
  const parent = parentRaw === '' ? '' : validateLayerId(parentRaw, 'Parent');
  const mountLabel = str(o, 'MountLabel');
  const so = o['StorageOpt'];
  const storageOpt: Record<string, string> = {};
  if (so !== undefined && so !== null) {
    if (typeof so !== 'object' || Array.isArray(so)) throw new InvalidArgumentError('StorageOpt must be an object', 'CVMFS_THIN_BAD_REQUEST');
    for (const [k, v] of Object.entries(so as Record<string, unknown>)) {
      if (typeof v !== 'string') throw new InvalidArgumentError(`StorageOpt.${k} must be a string`, 'CVMFS_THIN_BAD_REQUEST');
      storageOpt[k] = v;
    }
  }
  return { id, parent, mountLabel, storageOpt };
}

/** ApplyDiff carries its parameters in the query string: `?id=<id>&parent=<parent or empty>`. */
export function parseApplyDiffQuery(search: URLSearchParams): { id: string; parent: string } {
  const id = validateLayerId(search.get('id') ?? '', 'id');
  const p = search.get('parent') ?? '';
  return { id, parent: p === '' ? '' : validateLayerId(p, 'parent') };
}

/** A change reported by Changes: 0 modified, 1 added, 2 deleted (archive.ChangeType). */
export type ChangeKind = 0 | 1 | 2;
export const CHANGE_MODIFY: ChangeKind = 0;
export const CHANGE_ADD: ChangeKind = 1;
export const CHANGE_DELETE: ChangeKind = 2;

export interface Change {
  Path: string;
  Kind: ChangeKind;
}
