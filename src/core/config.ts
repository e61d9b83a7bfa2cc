import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { InvalidArgumentError } from './errors/errors.js';

/** Where CVMFS repositories are found and which ones images may reference. Shared by both daemons. */
export interface CvmfsLocation {
  /** The repository that holds unpacked layers (`unpacked.cern.ch`). */
  repository: string;
  /** Its mountpoint (`/cvmfs/<repository>` unless set). */
  absoluteMountpoint: string;
  /** Where other repositories are mounted (`/cvmfs`). */
  cvmfsRoot: string;
  /** Repositories that thin images may reference (default: just `repository`). */
  allowedRepositories: string[];
}

export const DEFAULT_REPOSITORY = 'unpacked.cern.ch';
export const DEFAULT_CVMFS_ROOT = '/cvmfs';

/** A CVMFS repository name is a DNS-style name: `unpacked.cern.ch`. */
export const REPOSITORY_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

/**
 * A daemon's TOML keys. A tiny validator rather than zod: the daemons must stay
 * small (zod alone adds ~7 MiB of resident memory to a Node process).
 */
export type Field =
  | { type: 'string'; check?: (v: string) => string | null }
  | { type: 'boolean' }
  | { type: 'integer'; min: number; max: number }
  | { type: 'string[]'; check?: (v: string) => string | null }
  | { type: 'enum'; values: readonly string[] };

type FieldValue<F> = F extends { type: 'string' }
  ? string
  : F extends { type: 'boolean' }
    ? boolean
    : F extends { type: 'integer' }
      ? number
      : F extends { type: 'string[]' }
        ? string[]
        : F extends { type: 'enum'; values: readonly (infer V)[] }
          ? V
          : never;

export type ConfigOf<S extends Record<string, Field>> = { [K in keyof S]?: FieldValue<S[K]> };

const checkRepo = (v: string) => (REPOSITORY_NAME.test(v) ? null : 'not a CVMFS repository name (like unpacked.cern.ch)');
const checkAbs = (v: string) => (path.isAbsolute(v) ? null : 'must be an absolute path');

/** Keys shared by the snapshotter and the graph driver TOML files (kebab-case as in containerd-cvmfs-grpc). */
export const cvmfsKeys = {
  repository: { type: 'string', check: checkRepo },
  'absolute-mountpoint': { type: 'string', check: checkAbs },
  'cvmfs-root': { type: 'string', check: checkAbs },
  'allowed-repositories': { type: 'string[]', check: checkRepo },
  'log-level': { type: 'enum', values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] },
  /** Seconds a CVMFS mount may take to answer before a request fails (a stalled client). */
  'cvmfs-timeout': { type: 'integer', min: 1, max: 600 },
  /** Seconds between checks of running containers for a dead CVMFS lower (0: never). */
  'check-interval': { type: 'integer', min: 0, max: 86400 },
} as const satisfies Record<string, Field>;

export function cvmfsLocation(opts: {
  repository?: string | undefined;
  absoluteMountpoint?: string | undefined;
  cvmfsRoot?: string | undefined;
  allowedRepositories?: string[] | undefined;
}): CvmfsLocation {
  const repository = opts.repository ?? DEFAULT_REPOSITORY;
  if (!REPOSITORY_NAME.test(repository)) {
    throw new InvalidArgumentError(`repository ${JSON.stringify(repository)} is not a CVMFS repository name`);
  }
  const cvmfsRoot = path.resolve(opts.cvmfsRoot ?? DEFAULT_CVMFS_ROOT);
  const absoluteMountpoint = path.resolve(opts.absoluteMountpoint ?? path.join(cvmfsRoot, repository));
  const allowed = opts.allowedRepositories && opts.allowedRepositories.length > 0 ? opts.allowedRepositories : [repository];
  for (const r of allowed) {
    if (!REPOSITORY_NAME.test(r)) throw new InvalidArgumentError(`allowed-repositories: ${JSON.stringify(r)} is not a CVMFS repository name`);
  }
  return { repository, absoluteMountpoint, cvmfsRoot, allowedRepositories: [...new Set(allowed)] };
}

/** Host directory of a repository (the configured mountpoint for the main one). */
export function repositoryMountpoint(loc: CvmfsLocation, repo: string): string {
  return repo === loc.repository ? loc.absoluteMountpoint : path.join(loc.cvmfsRoot, repo);
}

/** Read a TOML file and validate it against `spec` (unknown keys are errors). */
export function loadToml<S extends Record<string, Field>>(file: string, spec: S): ConfigOf<S> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: cannot read: ${(e as Error).message}`);
  }
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text) as Record<string, unknown>;
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: not valid TOML: ${(e as Error).message}`);
  }
  return validateConfig(raw, spec, `config ${file}`);
}

/** Validate a parsed config object against `spec`. Pure. */
export function validateConfig<S extends Record<string, Field>>(raw: Record<string, unknown>, spec: S, what = 'config'): ConfigOf<S> {
  const problems: string[] = [];
  const unknown = Object.keys(raw).filter((k) => !Object.hasOwn(spec, k));
  if (unknown.length) problems.push(`unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')} (known: ${Object.keys(spec).join(', ')})`);
  const out: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(spec)) {
    const v = raw[k];
    if (v === undefined) continue;
    let bad: string | null = null;
    if (f.type === 'string') bad = typeof v !== 'string' ? `must be a string` : (f.check?.(v) ?? null);
    else if (f.type === 'boolean') bad = typeof v !== 'boolean' ? 'must be true or false' : null;
    else if (f.type === 'integer') {
      const n = typeof v === 'bigint' ? Number(v) : v;
      bad = typeof n !== 'number' || !Number.isInteger(n) || n < f.min || n > f.max ? `must be a whole number from ${f.min} to ${f.max}` : null;
      if (!bad) {
        out[k] = n;
        continue;
      }
    } else if (f.type === 'enum') bad = typeof v !== 'string' || !f.values.includes(v) ? `must be one of ${f.values.join(', ')}` : null;
    else if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) bad = 'must be an array of strings';
    else for (const x of v as string[]) bad ??= f.check?.(x) ? `${JSON.stringify(x)}: ${f.check(x)}` : null;
    if (bad) problems.push(`${k}: ${bad}`);
    else out[k] = v;
  }
  if (problems.length) throw new InvalidArgumentError(`${what}: ${problems.join('; ')}`);
  return out as ConfigOf<S>;
}
