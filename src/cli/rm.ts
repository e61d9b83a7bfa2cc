/**
 * `cvmfs-thin rm IMAGE...`: take images out of a repository tree and its
 * podman store (src/convert/remove.ts); their layers go with the next `gc`.
 */
import { Command, Option } from 'commander';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { removeImages } from '../convert/remove.js';
import { addPublishingOptions, publishingFromOptions } from './publishing.js';

export function rmCommand(): Command {
  return addPublishingOptions(
    new Command('rm')
      .description(
        "remove converted images from the repository: .metadata/<name> (every platform), the readable link, the podman store's name (and the store image when it has no other); their layers go with the next gc",
      )
      .argument('<image...>', 'registry/repository:tag as converted (docker:// optional; no tag means :latest)'),
  )
    .option('--dry-run', 'list what would be removed, remove nothing')
    .option('--json', 'print the report as JSON on stdout')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('warn'))
    .action(async (images: string[], o: Record<string, unknown>) => {
      const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-rm');
      const { dir, publisher, lockTimeoutMs } = publishingFromOptions(o, log);
      const report = await removeImages({ repositoryDir: dir, images, dryRun: Boolean(o['dryRun']), log, publisher, lockTimeoutMs });
      if (o['json']) {
        process.stdout.write(`${JSON.stringify({ ...report, publish_steps: publisher.steps }, null, 2)}\n`);
        return;
      }
      const verb = report.dry_run ? 'would remove' : 'removed';
      for (const r of report.removed) {
        const what = [...r.metadata, ...r.links.map((l) => `link ${l}`), ...(r.podman_name ? [`podman store name ${r.podman_name}`] : [])];
        process.stdout.write(`${verb} ${r.tree_name}: ${what.join(', ')}\n`);
      }
      for (const id of report.podman?.removed_images ?? [])
        process.stdout.write(
          `${verb} podman store image ${id.slice(0, 12)} (no name left) and ${report.podman?.removed_layers.length ?? 0} store layers only it used\n`,
        );
      process.stderr.write(
        `rm ${dir}: ${verb} ${report.removed.length} image(s); their layers, chains and flat trees stay until cvmfs-thin gc finds them unreferenced\n`,
      );
    });
}
