/**
 * `cvmfs-thin wishlist FILE`: convert every image of a DUCC recipe that is not
 * converted yet; run by the publisher, periodically.
 */
import { writeConvertMetrics } from '../convert/metrics.js';
import { Command } from 'commander';
import { InvalidArgumentError } from '../core/errors/errors.js';
import { createLogger, type LogLevel } from '../core/telemetry/log.js';
import { type ImageSummary } from '../convert/convert.js';
import { errorSummary } from '../convert/convert.js';
import { abortOnSignals, createRun, summaryLine } from '../convert/run.js';
import { systemHost } from '../core/host/host.js';
import { mapSettled } from '../core/util/concurrency.js';
import { expandRecipe, readRecipe } from '../convert/wishlist.js';
import { addConversionOptions, checkTextfileFlag, runFlags } from './convert.js';
import { cliErrorText, GENERIC_CODE, withCode } from '../edge/error-policy.js';

export function wishlistCommand(): Command {
  const cmd = new Command('wishlist')
    .description('convert every image of a DUCC recipe (wishlist) that is not converted yet; skips what is done, continues past failures')
    .argument('<file>', 'DUCC recipe YAML (version, user, cvmfs_repo, output_format, input)')
    .option('--image-jobs <n>', 'images converted at once (default 2)', (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`--image-jobs: ${JSON.stringify(v)} is not a positive integer`, 'CVMFS_THIN_BAD_FLAG');
      return n;
    })
    .option('--no-thin', 'do not write thin images (DUCC --skip-thin-image)')
    .option('--dry-run', 'expand the wishlist and print the images it names, convert nothing');
  addConversionOptions(cmd);
  return cmd.action(async (file: string, o: Record<string, unknown>) => {
    checkTextfileFlag(o['metricsTextfile']);
    const log = createLogger(o['logLevel'] as LogLevel, 'cvmfs-thin-wishlist');
    const recipe = readRecipe(file);
    const flags = runFlags(o);
    // DUCC pushes thin images as the recipe's user with $DUCC_OUTPUT_REGISTRY_PASS
    const pass = process.env['DUCC_OUTPUT_REGISTRY_PASS'] ?? process.env['CVMFS_THIN_OUTPUT_REGISTRY_PASS'];
    if (!flags.destCreds && recipe.user && pass) flags.destCreds = { username: recipe.user, password: pass };
    const ctl = abortOnSignals(log);
    const run = createRun(flags, systemHost, log, ctl.signal, recipe.cvmfs_repo);
    if (flags.repository === undefined && run.repository !== recipe.cvmfs_repo) {
      log.warn({ recipe: recipe.cvmfs_repo, repository: run.repository }, 'using the repository name of --repository-dir, not the recipe cvmfs_repo');
    }
    const t0 = Date.now();
    const { wishes, errors } = await expandRecipe(recipe, run.registries, {
      noThin: o['thin'] === false,
      insecureRegistries: run.transport.insecureRegistries!,
    });
    if (o['dryRun']) {
      const out = wishes.map((w) => ({
        input: w.input,
        image: `docker://${w.ref.registry}/${w.ref.repository}${w.ref.tag ? `:${w.ref.tag}` : ''}${w.ref.digest ? `@${w.ref.digest}` : ''}`,
        thin: w.output,
      }));
      if (flags.json) process.stdout.write(`${JSON.stringify({ images: out, errors: errors.map((e) => errorSummary(e.error)) }, null, 2)}\n`);
      else for (const w of out) process.stdout.write(`${w.image}${w.thin ? ` -> ${w.thin}` : ''}\n`);
      for (const e of errors) process.stderr.write(`cvmfs-thin: ${cliErrorText(e.error)}\n`);
      if (errors.length) process.exitCode = 1;
      return;
    }
    const summaries: ImageSummary[] = [];
    try {
      const res = await mapSettled(wishes, (o['imageJobs'] as number | undefined) ?? 2, async (w) => {
        const s = await run.converter.convert({ source: { transport: 'docker', ref: w.ref }, thin: w.thin });
        for (const x of s) {
          if (!flags.json) {
            if (x.status === 'failed') process.stderr.write(`cvmfs-thin: ${withCode(x.error?.message ?? 'failed', x.error?.code ?? GENERIC_CODE)}\n`);
            else process.stdout.write(`${summaryLine(x)}\n`);
          }
        }
        return s;
      });
      for (const r of res) if (r.status === 'fulfilled') summaries.push(...r.value);
    } finally {
      run.progress.close();
    }
    const count = (st: ImageSummary['status']) => summaries.filter((s) => s.status === st).length;
    const failed = count('failed') + errors.length;
    if (typeof o['metricsTextfile'] === 'string') await writeConvertMetrics(o['metricsTextfile'], summaries, (Date.now() - t0) / 1000);
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify(
          {
            recipe: file,
            images: summaries,
            expansion_errors: errors.map((e) => ({ input: e.input, ...errorSummary(e.error) })),
            converted: count('converted'),
            skipped: count('skipped'),
            failed,
            publish_steps: run.publisher.steps,
            seconds: (Date.now() - t0) / 1000,
          },
          null,
          2,
        )}\n`,
      );
    } else {
      for (const e of errors) process.stderr.write(`cvmfs-thin: ${cliErrorText(e.error)}\n`);
      process.stderr.write(`wishlist ${file}: ${count('converted')} converted, ${count('skipped')} up to date, ${failed} failed\n`);
    }
    if (failed) process.exitCode = ctl.signal.aborted ? 130 : 1;
  });
}
