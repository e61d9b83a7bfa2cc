/**
 * The publishing options of the commands that change a repository without
 * converting (`gc`, `rm`): the same transaction hooks and host-wide lock as
 * `convert`, so that on a publisher they run inside a `cvmfs_server`
 * transaction, one at a time with the converters.
 */
import type { Command } from 'commander';
import type { Logger } from 'pino';
import { systemHost } from '../core/host/host.js';
import { hooksFromOptions, Publisher } from '../convert/publish.js';
import { resolveRepository } from '../convert/run.js';
import { parseDuration } from '../convert/util.js';

export function addPublishingOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--repository-dir <dir>', 'root of the repository tree')
    .option('--repository <name>', 'CVMFS repository name (for the hooks; default: the directory name)')
    .option('--transaction-command <cmd>', 'run before changing anything (no shell), e.g. "cvmfs_server transaction {repository}"')
    .option('--publish-command <cmd>', 'run after the changes')
    .option('--abort-command <cmd>', 'run when a change failed')
    .option('--cvmfs-server', 'shorthand for the three cvmfs_server commands')
    .option('--lock-file <file>', 'host-wide lock serialising publications (default /run/lock/cvmfs-thin-<repository>.lock)')
    .option(
      '--lock-timeout <duration>',
      'give up when a converter holds the publishing lock (or the podman store) longer than this, e.g. 30s, 10m (default: wait)',
    );
}

interface Publishing {
  dir: string;
  repository: string;
  publisher: Publisher;
  lockTimeoutMs: number | undefined;
}

export function publishingFromOptions(o: Record<string, unknown>, log: Logger): Publishing {
  const { dir, repository } = resolveRepository({ repositoryDir: o['repositoryDir'] as string, repository: o['repository'] as string | undefined });
  const lockTimeoutMs = o['lockTimeout'] === undefined ? undefined : parseDuration(String(o['lockTimeout']), '--lock-timeout');
  const publisher = new Publisher({
    hooks: hooksFromOptions({
      transactionCmd: o['transactionCommand'] as string | undefined,
      publishCmd: o['publishCommand'] as string | undefined,
      abortCmd: o['abortCommand'] as string | undefined,
      cvmfsServer: o['cvmfsServer'] as boolean | undefined,
    } as Parameters<typeof hooksFromOptions>[0]),
    repository,
    repositoryDir: dir,
    lockFile: o['lockFile'] as string | undefined,
    lockTimeoutMs,
    log,
    host: systemHost,
  });
  return { dir, repository, publisher, lockTimeoutMs };
}
