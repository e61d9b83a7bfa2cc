/** Where CVMFS repositories are found and which ones images may reference: the repository names and paths every part shares. Pure. */
import path from 'node:path';
import { InvalidArgumentError } from '../errors/errors.js';

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
const DEFAULT_CVMFS_ROOT = '/cvmfs';

/** A CVMFS repository name is a DNS-style name: `unpacked.cern.ch`. */
export const REPOSITORY_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/;

export function cvmfsLocation(opts: {
  repository?: string | undefined;
  absoluteMountpoint?: string | undefined;
  cvmfsRoot?: string | undefined;
  allowedRepositories?: string[] | undefined;
}): CvmfsLocation {
  const repository = opts.repository ?? DEFAULT_REPOSITORY;
  if (!REPOSITORY_NAME.test(repository)) {
    throw new InvalidArgumentError(`repository ${JSON.stringify(repository)} is not a CVMFS repository name`, 'CVMFS_THIN_BAD_FLAG');
  }
  const cvmfsRoot = path.resolve(opts.cvmfsRoot ?? DEFAULT_CVMFS_ROOT);
  const absoluteMountpoint = path.resolve(opts.absoluteMountpoint ?? path.join(cvmfsRoot, repository));
  const allowed = opts.allowedRepositories && opts.allowedRepositories.length > 0 ? opts.allowedRepositories : [repository];
  for (const r of allowed) {
    if (!REPOSITORY_NAME.test(r))
      throw new InvalidArgumentError(`allowed-repositories: ${JSON.stringify(r)} is not a CVMFS repository name`, 'CVMFS_THIN_BAD_FLAG');
  }
  return { repository, absoluteMountpoint, cvmfsRoot, allowedRepositories: [...new Set(allowed)] };
}

/** Host directory of a repository (the configured mountpoint for the main one). */
export function repositoryMountpoint(loc: CvmfsLocation, repo: string): string {
  return repo === loc.repository ? loc.absoluteMountpoint : path.join(loc.cvmfsRoot, repo);
}
