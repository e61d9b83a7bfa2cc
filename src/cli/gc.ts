/**
 * `cvmfs-thin gc`: remove layers, chains and flat trees no image references
 * any more, and the access profiles of stacks that are gone; run by the
 * publisher, after `rm` or periodically.
 */
import { Command, Option } from 'commander';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { collectGarbage } from '../convert/gc.js';
import { parseDuration } from '../convert/util.js';
import { addPublishingOptions, publishingFromOptions } from './publishing.js';
import { GENERIC_CODE, withCode } from '../edge/error-policy.js';

export function gcCommand(): Command {
  return addPublishingOptions(
    new Command('gc')
      .description(
        'remove layers, chains and flat trees no image references any more, older than the grace period, and the access profiles of stacks that are gone',
      )
      .requiredOption('--grace <duration>', 'keep unreferenced items younger than this (e.g. 7d, 12h, 30m, 0; a bare number means days)'),
  )
    .option('--dry-run', 'list what would be removed, remove nothing')
    .option('--json', 'print the report as JSON on stdout')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('warn'))
    .action(async (o: Record<string, unknown>) => {
      const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-gc');
      const graceMs = parseDuration(String(o['grace']), '--grace');
      const { dir, publisher, lockTimeoutMs } = publishingFromOptions(o, log);
      const report = await collectGarbage({ repositoryDir: dir, graceMs, dryRun: Boolean(o['dryRun']), log, publisher, lockTimeoutMs });
      if (o['json']) {
        process.stdout.write(`${JSON.stringify({ ...report, publish_steps: publisher.steps }, null, 2)}\n`);
      } else {
        const verb = report.dry_run ? 'would remove' : 'removed';
        for (const r of report.removed) process.stdout.write(`${verb} ${r.kind} ${r.path} (${r.why ? `${r.why}; ` : ''}unchanged for ${formatAge(r.age)})\n`);
        for (const im of report.podman?.removed_images ?? [])
          process.stdout.write(`${verb} podman store image ${im.id.slice(0, 12)} ${im.names.join(' ')} (${im.reason})\n`);
        // the report keeps the message of each failed removal (an errno error: the generic code)
        for (const e of report.errors) process.stderr.write(`cvmfs-thin: ${withCode(`cannot remove ${e.path}: ${e.message}`, GENERIC_CODE)}\n`);
        for (const l of report.left_alone) process.stderr.write(`cvmfs-thin: left alone ${l.path}: ${l.reason}\n`);
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
