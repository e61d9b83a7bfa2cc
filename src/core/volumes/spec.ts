/**
 * What a CVMFS volume is, from the names and options users give the three
 * front-ends (Docker volume names and `-o`, CSI volume attributes, FlexVolume
 * options), validated once here. Pure: no I/O.
 *
 * Names: a fully qualified repository name (`cms.cern.ch`), optionally in
 * CERN docker-volume-cvmfs's forms `cms.cern.ch@<tag>` (a named snapshot,
 * CVMFS_REPOSITORY_TAG) or `cms.cern.ch#<root hash>` (CVMFS_ROOT_HASH, a
 * pinned catalog). `repo@trunk` is the same volume as `repo`: trunk is what a
 * plain mount serves. Tags, hashes, dates and client settings need a private
 * client mount (backend "client"); the host's /cvmfs serves trunk only.
 */
import { createHash } from 'node:crypto';
import { REPOSITORY_NAME } from '../cvmfs/location.js';
import { InvalidArgumentError } from '../errors/errors.js';

export interface VolumeSpec {
  /** The repository, or null for the whole /cvmfs tree (CSI without `repository`). */
  repository: string | null;
  /** CVMFS_REPOSITORY_TAG. */
  tag?: string | undefined;
  /** CVMFS_ROOT_HASH (the mount is pinned: CVMFS_AUTO_UPDATE=no). */
  hash?: string | undefined;
  /** CVMFS_REPOSITORY_DATE (ISO 8601, UTC). */
  date?: string | undefined;
  /** Extra client parameters, `KEY=VALUE` lines (allowed keys only). */
  clientConfig?: string | undefined;
}

/** The longest repository name accepted (a DNS name is at most 253 bytes). */
const MAX_REPOSITORY_NAME = 253;
const TAG = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HASH = /^[0-9a-f]{40}(-[a-z0-9]{1,16})?$/;
const DATE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
const CONFIG_KEY = /^CVMFS_[A-Z0-9_]{1,64}$/;

/**
 * The per-volume options, the same keys in every front-end: Docker `-o`, CSI
 * volume attributes (beside `repository`), FlexVolume options (beside `repository`).
 */
export const VOLUME_OPTIONS = ['tag', 'hash', 'date', 'clientConfig'] as const;

/**
 * Client parameters a volume may set by default: where to fetch from and which
 * snapshot, never where to write (cache, user, keys, mount options) — CSI
 * inline volumes come from pod authors.
 */
export const DEFAULT_CLIENT_CONFIG_KEYS: readonly string[] = [
  'CVMFS_REPOSITORY_TAG',
  'CVMFS_REPOSITORY_DATE',
  'CVMFS_ROOT_HASH',
  'CVMFS_AUTO_UPDATE',
  'CVMFS_HTTP_PROXY',
  'CVMFS_FALLBACK_PROXY',
  'CVMFS_SERVER_URL',
  'CVMFS_USE_GEOAPI',
  'CVMFS_TIMEOUT',
  'CVMFS_TIMEOUT_DIRECT',
  'CVMFS_MAX_RETRIES',
  'CVMFS_BACKOFF_INIT',
  'CVMFS_BACKOFF_MAX',
  'CVMFS_KCACHE_TIMEOUT',
  'CVMFS_MAX_TTL',
  'CVMFS_FOLLOW_REDIRECTS',
];

function bad(what: string, value: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`${what} ${JSON.stringify(value.length > 300 ? `${value.slice(0, 300)}…` : value)}: ${why}`, 'CVMFS_THIN_BAD_VOLUME');
}

function checkRepositoryName(repo: string, what = 'repository'): string {
  if (repo.length === 0) throw bad(what, repo, 'is empty');
  if (repo.length > MAX_REPOSITORY_NAME) throw bad(what, repo, `is longer than ${MAX_REPOSITORY_NAME} characters`);
  if (/^[0-9a-f]{64}$/.test(repo)) {
    throw bad(what, repo, 'is an anonymous volume name; CVMFS volumes are named after their repository (docker volume create -d cvmfs --name cms.cern.ch)');
  }
  if (!REPOSITORY_NAME.test(repo)) throw bad(what, repo, 'is not a fully qualified CVMFS repository name (lower case, like cms.cern.ch)');
  return repo;
}

/** Parse `repo`, `repo@tag` or `repo#hash`. */
function parseVolumeName(name: string): VolumeSpec {
  const at = name.indexOf('@');
  const hashAt = name.indexOf('#');
  if (at >= 0 && hashAt >= 0) throw bad('volume name', name, 'cannot have both @tag and #hash');
  if (at >= 0) {
    const tag = name.slice(at + 1);
    return withTag({ repository: checkRepositoryName(name.slice(0, at), 'volume name') }, tag);
  }
  if (hashAt >= 0) {
    const hash = name.slice(hashAt + 1);
    if (!HASH.test(hash)) throw bad('root hash', hash, 'must be a 40-digit lower-case hex catalog hash');
    return { repository: checkRepositoryName(name.slice(0, hashAt), 'volume name'), hash };
  }
  return { repository: checkRepositoryName(name, 'volume name') };
}

function withTag(spec: VolumeSpec, tag: string): VolumeSpec {
  if (!TAG.test(tag)) throw bad('tag', tag, 'must be 1-128 characters of letters, digits, ".", "_" and "-"');
  return tag === 'trunk' ? spec : { ...spec, tag };
}

/**
 * Apply per-volume options (Docker `-o`, CSI attributes, FlexVolume options):
 * `tag`, `hash`, `date`, `clientConfig`. Unknown options are refused.
 */
function applyOptions(spec: VolumeSpec, opts: Record<string, string>, allowedKeys: readonly string[] = DEFAULT_CLIENT_CONFIG_KEYS): VolumeSpec {
  let out = { ...spec };
  for (const [k, v] of Object.entries(opts)) {
    if (typeof v !== 'string') throw bad('option', k, 'must have a string value');
    switch (k) {
      case 'tag':
        out = withTag(out, v);
        break;
      case 'hash':
        if (!HASH.test(v)) throw bad('root hash', v, 'must be a 40-digit lower-case hex catalog hash');
        out.hash = v;
        break;
      case 'date':
        if (!DATE.test(v) || Number.isNaN(Date.parse(v))) throw bad('date', v, 'must be an ISO 8601 UTC time like 2024-05-01T00:00:00Z');
        out.date = v;
        break;
      case 'clientConfig':
      case 'client-config':
        out.clientConfig = checkClientConfig(v, allowedKeys);
        break;
      default:
        throw bad('option', k, `is not known (known: ${VOLUME_OPTIONS.join(', ')})`);
    }
  }
  if (out.hash && out.tag) throw bad('options', `${out.tag}/${out.hash}`, 'a volume cannot have both a tag and a root hash');
  if (out.repository === null && needsClient(out)) throw bad('options', 'repository', 'tag, hash, date and clientConfig need a repository');
  return out;
}

/** Validate `KEY=VALUE` lines; comments and blank lines are dropped. Returns the normalised text. */
function checkClientConfig(text: string, allowedKeys: readonly string[] = DEFAULT_CLIENT_CONFIG_KEYS): string {
  if (text.length > 16_384) throw bad('clientConfig', text, 'is larger than 16 KiB');
  const lines: string[] = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const key = eq > 0 ? line.slice(0, eq).trim() : '';
    const value = eq > 0 ? line.slice(eq + 1).trim() : '';
    if (!CONFIG_KEY.test(key)) throw bad(`clientConfig line ${i + 1}`, raw, 'must be KEY=VALUE with a CVMFS_* key');
    if (!allowedKeys.includes(key)) throw bad(`clientConfig line ${i + 1}`, key, `may not be set per volume (allowed: ${allowedKeys.join(', ')})`);
    if (/[`$;&|<>\\\0\r]/.test(value)) throw bad(`clientConfig line ${i + 1}`, value, 'contains shell or control characters');
    lines.push(`${key}=${value}`);
  }
  return lines.join('\n');
}

/** Does this volume need a private client mount (not just the host's /cvmfs)? */
export function needsClient(spec: VolumeSpec): boolean {
  return Boolean(spec.tag || spec.hash || spec.date || spec.clientConfig);
}

/**
 * The canonical key of a volume: equal keys share one backend mount. Also the
 * mount directory's name, so it is a safe single path component.
 */
export function volumeKey(spec: VolumeSpec): string {
  if (spec.repository === null) return '_cvmfs';
  let k = spec.repository;
  if (spec.tag) k += `@${spec.tag}`;
  if (spec.hash) k += `#${spec.hash}`;
  if (spec.date || spec.clientConfig) {
    const h = createHash('sha256')
      .update(`${spec.date ?? ''}\n${spec.clientConfig ?? ''}`)
      .digest('hex')
      .slice(0, 16);
    k += `~${h}`;
  }
  return k;
}

/** The name a volume is shown by (Docker's name for it). */
export function volumeName(spec: VolumeSpec): string {
  if (spec.repository === null) return 'cvmfs';
  return spec.tag ? `${spec.repository}@${spec.tag}` : spec.hash ? `${spec.repository}#${spec.hash}` : spec.repository;
}

/** The client parameters of a private mount of this volume. */
export function clientParameters(spec: VolumeSpec): string[] {
  const out: string[] = [];
  if (spec.tag) out.push(`CVMFS_REPOSITORY_TAG=${spec.tag}`);
  if (spec.hash) out.push(`CVMFS_ROOT_HASH=${spec.hash}`, 'CVMFS_AUTO_UPDATE=no');
  if (spec.date) out.push(`CVMFS_REPOSITORY_DATE=${spec.date}`);
  if (spec.clientConfig) out.push(spec.clientConfig);
  return out;
}

/**
 * Repository allowlist: exact names (`cms.cern.ch`), domain suffixes
 * (`*.cern.ch` or `.cern.ch`) and `*` (any valid name).
 */
export class RepositoryAllowlist {
  private readonly exact = new Set<string>();
  private readonly suffixes: string[] = [];
  private any = false;

  constructor(readonly patterns: readonly string[]) {
    for (const p of patterns) {
      if (p === '*') this.any = true;
      else if (p.startsWith('*.') || p.startsWith('.')) {
        const s = p.slice(p.indexOf('.'));
        if (!REPOSITORY_NAME.test(s.slice(1)) && !/^[a-z0-9-]+$/.test(s.slice(1)))
          throw bad('allowed repository pattern', p, 'is not a domain suffix like *.cern.ch');
        this.suffixes.push(s);
      } else this.exact.add(checkRepositoryName(p, 'allowed repository'));
    }
  }

  /** The allowlist of `allow`: parsed from its patterns, or as given when already parsed. */
  static from(allow: readonly string[] | RepositoryAllowlist): RepositoryAllowlist {
    return allow instanceof RepositoryAllowlist ? allow : new RepositoryAllowlist(allow);
  }

  /** In logs and JSON: the patterns. */
  toJSON(): readonly string[] {
    return this.patterns;
  }

  allows(repo: string): boolean {
    return this.any || this.exact.has(repo) || this.suffixes.some((s) => repo.endsWith(s));
  }

  /** Throw unless `spec`'s repository is allowed. */
  check(spec: VolumeSpec): VolumeSpec {
    if (spec.repository !== null && !this.allows(spec.repository)) {
      throw new InvalidArgumentError(
        `repository ${JSON.stringify(spec.repository)} is not allowed on this node (allowed: ${this.patterns.join(', ')})`,
        'CVMFS_THIN_REPOSITORY_NOT_ALLOWED',
      );
    }
    return spec;
  }
}

/**
 * Validate a name (or, with `optionalRepository`, CSI attributes where an
 * empty repository means the whole tree) plus options against the allowlist.
 */
export function parseAllowed(
  allow: RepositoryAllowlist,
  keys: readonly string[],
  name: string,
  opts: Record<string, string>,
  optionalRepository = false,
): VolumeSpec {
  if (typeof name !== 'string') throw new InvalidArgumentError('volume name must be a string', 'CVMFS_THIN_BAD_VOLUME');
  const base: VolumeSpec = optionalRepository && name === '' ? { repository: null } : parseVolumeName(name);
  return allow.check(applyOptions(base, opts, keys));
}
