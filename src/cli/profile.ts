/**
 * `cvmfs-thin profile`: access profiles (what a container reads in its first
 * seconds, prefetched at every later start; thin-image/SPEC.md §8) —
 * `publish` the ones nodes recorded into the repository, `disable` prefetch
 * for an image, `show` one.
 */
import { Command, Option } from 'commander';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { stackId } from '../core/thin/profile.js';
import { disabledProfile, imageLayers, publishProfiles, readProfiles, type ProfileWrite } from '../convert/profiles.js';
import { addPublishingOptions, publishingFromOptions } from './publishing.js';
import { parseSize } from './convert.js';

const logLevel = () => new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('warn');

function report(dir: string, writes: ProfileWrite[], dryRun: boolean): void {
  const verb = dryRun ? 'would write' : 'wrote';
  for (const w of writes) {
    const p = w.profile;
    const pack = p.pack
      ? `; pack of ${p.pack.files} file(s), ${Math.round(p.pack.bytes / 1024)} KiB${w.packSkipped ? ` (${w.packSkipped} left out)` : ''}${p.image ? `, image ${Math.round(p.image.bytes / 1024)} + ${Math.round(p.image.data.bytes / 1024)} KiB` : ''}`
      : '';
    const what = p.prefetch ? `${p.files.length} file(s), ${Math.round(p.files.reduce((a, f) => a + f.size, 0) / 1024)} KiB${pack}` : 'prefetch disabled';
    process.stdout.write(`${verb} ${w.path}: ${what}${w.replaced === null ? '' : ` (replacing one of ${w.replaced} file(s))`}\n`);
  }
  process.stderr.write(`profile ${dir}: ${verb} ${writes.length} profile(s)\n`);
}

export function profileCommand(): Command {
  const cmd = new Command('profile').description(
    'access profiles: what a container of an image reads in its first seconds, read ahead by the snapshotter at every later start',
  );
  cmd.addCommand(
    addPublishingOptions(
      new Command('publish')
        .description(
          'validate profiles recorded on nodes (snapshotter --record-profiles: <root>/profiles/*.json) and write them into the repository (.profiles/<xx>/<stack id>.json)',
        )
        .argument('<file...>', 'profile files'),
    )
      .option('--dry-run', 'validate and say what would be written')
      .option('--no-pack', "write no pack (nor image): nodes read the profile's files one by one")
      .option('--no-image', 'write no EROFS image of the pack: nodes unpack the pack instead of mounting the image')
      .option('--pack-max <bytes>', "most file content in a profile's pack, in access order (suffixes K, M, G; default 256M)", parseSize('--pack-max'))
      .addOption(logLevel())
      .action(async (files: string[], o: Record<string, unknown>) => {
        const profiles = await readProfiles(files);
        const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-profile');
        const { dir, publisher } = publishingFromOptions(o, log);
        const dryRun = Boolean(o['dryRun']);
        report(
          dir,
          await publishProfiles(dir, profiles, publisher, {
            dryRun,
            pack: o['pack'] !== false,
            image: o['image'] !== false,
            packMaxBytes: o['packMax'] as number | undefined,
            log,
          }),
          dryRun,
        );
      }),
  );
  cmd.addCommand(
    addPublishingOptions(
      new Command('disable')
        .description('never prefetch (nor record) a converted image: its profile becomes an opt-out; `profile publish` of a recorded one enables it again')
        .argument('<image...>', 'registry/repository:tag as converted'),
    )
      .option('--dry-run', 'say what would be written')
      .addOption(logLevel())
      .action(async (images: string[], o: Record<string, unknown>) => {
        const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-profile');
        const { dir, publisher } = publishingFromOptions(o, log);
        const profiles = [];
        for (const image of images) profiles.push(disabledProfile(await imageLayers(dir, image), `disabled for ${image} by cvmfs-thin profile disable`));
        const dryRun = Boolean(o['dryRun']);
        report(dir, await publishProfiles(dir, profiles, publisher, { dryRun, log }), dryRun);
      }),
  );
  cmd.addCommand(
    new Command('show')
      .description('validate a profile and print what it holds')
      .argument('<file>')
      .option('--json', 'print it as JSON')
      .action(async (file: string, o: { json?: boolean }) => {
        const [p] = await readProfiles([file]);
        if (!p) return;
        if (o.json) return void process.stdout.write(`${JSON.stringify(p, null, 2)}\n`);
        const bytes = p.files.reduce((a, f) => a + f.size, 0);
        process.stdout.write(
          `stack ${stackId(p.layers)} (${p.layers.length} layer(s)), created ${p.created}${p.source ? `, ${p.source}` : ''}\n` +
            (p.prefetch ? `prefetch: ${p.files.length} file(s), ${Math.round(bytes / 1024)} KiB\n` : 'prefetch: disabled\n') +
            p.files
              .slice(0, 20)
              .map((f) => `  ${f.at === undefined ? '     -   ' : `${String(f.at).padStart(6)} ms`}  ${String(f.size).padStart(10)}  ${f.path}\n`)
              .join('') +
            (p.files.length > 20 ? `  … ${p.files.length - 20} more\n` : ''),
        );
      }),
  );
  return cmd;
}
