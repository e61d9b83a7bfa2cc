/**
 * A Stratum-0's repository configuration (`/etc/cvmfs/repositories.d/<repo>/server.conf`),
 * as far as it changes what a publish keeps: without `CVMFS_INCLUDE_XATTRS=true`
 * a transaction drops every xattr (`security.capability`). Read by the
 * converter (a warning when it publishes) and by `doctor` on a publisher.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const SERVER_CONF_DIR = '/etc/cvmfs/repositories.d';

export const serverConfFile = (repository: string, confDir = SERVER_CONF_DIR): string => path.join(confDir, repository, 'server.conf');

/** Does the repository's server.conf publish xattrs? null when there is no server.conf (not a publisher of it). */
function publishesXattrs(repository: string, confDir = SERVER_CONF_DIR): boolean | null {
  let text: string;
  try {
    text = readFileSync(serverConfFile(repository, confDir), 'utf8');
  } catch {
    return null;
  }
  return /^\s*CVMFS_INCLUDE_XATTRS\s*=\s*["']?(true|yes|1)["']?\s*$/im.test(text);
}

/** The repositories this host publishes (those with a server.conf). */
export function publishedRepositories(confDir = SERVER_CONF_DIR): string[] {
  try {
    return readdirSync(confDir)
      .filter((r) => publishesXattrs(r, confDir) !== null)
      .sort();
  } catch {
    return [];
  }
}

/** The warning for a repository whose publishes drop xattrs, or null. */
export function xattrWarning(repository: string, confDir = SERVER_CONF_DIR): string | null {
  if (publishesXattrs(repository, confDir) !== false) return null;
  return `${serverConfFile(repository, confDir)} has no CVMFS_INCLUDE_XATTRS=true: the publish drops xattrs such as security.capability; nodes restore them from each layer's record by a local copy of those files at first use (set CVMFS_INCLUDE_XATTRS=true to publish them)`;
}
