import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { InvalidArgumentError } from './errors.js';

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

const repoName = z.string().regex(REPOSITORY_NAME, 'not a CVMFS repository name (like unpacked.cern.ch)');
const absPath = z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path');

/** Keys shared by the snapshotter and the graph driver TOML files (kebab-case as in containerd-cvmfs-grpc). */
export const cvmfsKeys = {
  repository: repoName.optional(),
  'absolute-mountpoint': absPath.optional(),
  'cvmfs-root': absPath.optional(),
  'allowed-repositories': z.array(repoName).optional(),
  'log-level': z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).optional(),
};

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

/** Read a TOML file and validate it against a strict zod object (unknown keys are errors). */
export function loadToml<T extends z.ZodRawShape>(file: string, shape: T): z.infer<z.ZodObject<T>> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: cannot read: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (e) {
    throw new InvalidArgumentError(`config ${file}: not valid TOML: ${(e as Error).message}`);
  }
  const res = z.strictObject(shape).safeParse(raw);
  if (!res.success) {
    const msgs = res.error.issues.map((i) => {
      const where = i.path.length ? i.path.join('.') : '(top level)';
      if (i.code === 'unrecognized_keys') return `unknown key(s) ${i.keys.map((k) => JSON.stringify(k)).join(', ')}`;
      return `${where}: ${i.message}`;
    });
    throw new InvalidArgumentError(`config ${file}: ${msgs.join('; ')}`);
  }
  return res.data;
}
