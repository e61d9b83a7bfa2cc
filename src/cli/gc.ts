import { Command, Option } from 'commander';
import { createLogger, type LogLevel } from '../core/log.js';
import { collectGarbage } from '../convert/gc.js';
import { hooksFromOptions, Publisher } from '../convert/publish.js';
import { resolveRepository } from '../convert/run.js';
import { parseDuration } from '../convert/util.js';

export function gcCommand(): Command {
  return new Command('gc')
    .description('remove layers, chains and flat trees no image references any more, older than the grace period')
    .requiredOption('--repository-dir <dir>', 'root of the repository tree')
    .requiredOption('--grace <duration>', 'keep unreferenced items younger than this (e.g. 7d, 12h, 30m, 0; a bare number means days)')
    .option('--repository <name>', 'CVMFS repository name (for the hooks; default: the directory name)')
    .option('--dry-run', 'list what would be removed, remove nothing')
    .option('--transaction-command <cmd>', 'run before removing (no shell), e.g. "cvmfs_server transaction {repository}"')
    .option('--publish-command <cmd>', 'run after removing')
    .option('--abort-command <cmd>', 'run when removing failed')
    .option('--cvmfs-server', 'shorthand for the three cvmfs_server commands')
    .option('--lock-file <file>', 'host-wide lock serialising publications')
    .option('--json', 'print the report as JSON on stdout')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('warn'))
    .action(async (o: Record<string, unknown>) => {
      const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-gc');
      const graceMs = parseDuration(String(o['grace']), '--grace');
      const { dir, repository } = resolveRepository({ repositoryDir: o['repositoryDir'] as string, repository: o['repository'] as string | undefined });
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
        log,
      });
      const report = await collectGarbage({ repositoryDir: dir, graceMs, dryRun: Boolean(o['dryRun']), log, publisher });
      if (o['json']) {
        process.stdout.write(`${JSON.stringify({ ...report, publish_steps: publisher.steps }, null, 2)}\n`);
      } else {
        const verb = report.dry_run ? 'would remove' : 'removed';
        for (const r of report.removed) process.stdout.write(`${verb} ${r.kind} ${r.path} (unchanged for ${formatAge(r.age)})\n`);
        for (const im of report.podman?.removed_images ?? []) process.stdout.write(`${verb} podman store image ${im.id.slice(0, 12)} ${im.names.join(' ')} (${im.reason})\n`);
        for (const e of report.errors) process.stderr.write(`cvmfs-thin: cannot remove ${e.path}: ${e.message}\n`);
        process.stderr.write(
          `gc ${dir}: ${verb} ${report.removed.length}, kept ${report.kept_recent.length} unreferenced within the grace period; referenced: ${report.referenced.layers} layers, ${report.referenced.chains} chains, ${report.referenced.flat} flat trees of ${report.referenced.images} images\n`,
        );
      }
      if (report.errors.length) process.exitCode = 1;
    });
}

function formatAge(s: number): string {
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

