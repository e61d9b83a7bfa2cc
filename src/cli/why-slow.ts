/**
 * `cvmfs-thin why-slow <container>`: where the time of one container start
 * went, from the snapshotter's trace of it (core/stack/start-trace.ts): the
 * phases of its own work, the image's access profile and its prefetch, and
 * what the CVMFS client fetched meanwhile.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { InvalidArgumentError, NotFoundError } from '../core/errors/errors.js';
import { type StartTrace, traceFile, verdictOf } from '../core/stack/start-trace.js';
import { SNAPSHOTTER_DEFAULTS } from './snapshotter.js';

const PHASES: Record<string, string> = {
  resolve: "the thin image's CVMFS layers resolved (at pull)",
  cvmfs: "the container's CVMFS layers checked (probe helper)",
  dirs: 'its upper and work directories made',
  journal: 'its record written (fsync)',
};

/**
 * The trace of `id`: a snapshot key as the snapshotter saw it (containerd's
 * `<namespace>/<n>/<key>`), the key containerd was given (the container ID
 * for ctr and the CRI), or a unique prefix of that.
 */
export async function findTrace(dir: string, id: string): Promise<StartTrace> {
  if (id === '') throw new InvalidArgumentError('give a container ID or snapshot key', 'CVMFS_THIN_BAD_FLAG');
  const read = async (f: string) => JSON.parse(await fsp.readFile(f, 'utf8')) as StartTrace;
  try {
    return await read(traceFile(dir, id));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  let names: string[];
  try {
    names = (await fsp.readdir(dir)).filter((n) => n.endsWith('.json'));
  } catch {
    throw new NotFoundError(`no start traces in ${dir} (is this the snapshotter's root? --root)`);
  }
  const keys = names.map((n) => ({ n, key: decodeURIComponent(n.slice(0, -5)) }));
  const last = (k: string) => k.slice(k.lastIndexOf('/') + 1);
  const tiers = [(k: string) => last(k) === id, (k: string) => last(k).startsWith(id), (k: string) => k.startsWith(id)];
  for (const match of tiers) {
    const hits = keys.filter((x) => match(x.key));
    if (hits.length === 1) return read(path.join(dir, hits[0]!.n));
    if (hits.length > 1)
      throw new InvalidArgumentError(
        `${JSON.stringify(id)} matches ${hits.length} starts (${hits
          .slice(0, 5)
          .map((h) => h.key)
          .join(', ')}…): give more of it`,
        'CVMFS_THIN_BAD_FLAG',
      );
  }
  throw new NotFoundError(`no trace of a start of ${JSON.stringify(id)} in ${dir} (the snapshotter keeps the newest 500, of containers of thin images)`);
}

const kib = (n: number) => (n >= 1024 ? `${(n / 1024).toFixed(1)} MiB` : `${n} KiB`);

export function formatTrace(t: StartTrace): string {
  const out = [`start of ${t.snapshot} (${t.daemon}) at ${t.started}: image ${t.origin ?? '?'} (snapshot ${t.image ?? '?'}), ${t.layers} layer(s)`];
  const total = Object.values(t.phases).reduce((a, b) => a + b, 0);
  out.push(`  our own work: ${total.toFixed(1)} ms${t.budgetMs !== undefined ? ` (budget ${t.budgetMs} ms)` : ''}`);
  for (const [k, v] of Object.entries(t.phases).sort((a, b) => b[1] - a[1])) out.push(`    ${k.padEnd(8)} ${v.toFixed(1).padStart(9)} ms  ${PHASES[k] ?? ''}`);
  out.push(`  access profile: ${t.profile ?? 'not looked up yet'}`);
  if (t.prefetch) {
    const p = t.prefetch;
    out.push(
      `  prefetch: ${p.files} file(s), ${kib(Math.round(p.bytes / 1024))} in ${p.ms} ms (missing ${p.missing}, failed ${p.failed}${p.stopped ? `, stopped: ${p.stopped}` : ''})`,
    );
  }
  if (t.record)
    out.push(
      `  recorded: ${t.record.files} file(s) in ${t.record.ms} ms (${t.record.reason})${t.record.saved ? ` -> ${t.record.saved}` : ''}${t.record.error ? `: ${t.record.error}` : ''}`,
    );
  const c = t.cvmfs;
  if (c?.after)
    out.push(
      `  CVMFS client meanwhile: ${c.after.downloads - c.before.downloads} download(s), ${kib(c.after.rxKiB - c.before.rxKiB)} from the network, catalogs loaded ${c.before.catalogs} -> ${c.after.catalogs}`,
    );
  else if (c) out.push(`  CVMFS client at the start: ${c.before.downloads} download(s) so far, ${c.before.catalogs} catalog(s) loaded`);
  else out.push('  CVMFS client counters: not available (not a CVMFS mount, or getfattr missing)');
  out.push(`  verdict: ${t.verdict ?? verdictOf(t)}`);
  return `${out.join('\n')}\n`;
}

export function whySlowCommand(): Command {
  return new Command('why-slow')
    .description(
      "print where the time of a container start went: the snapshotter's phases, the image's access profile and prefetch, what the CVMFS client fetched",
    )
    .argument('<container>', 'container ID (the snapshot key ctr and the CRI use), or a unique prefix of it')
    .option('--root <dir>', `the snapshotter's state directory (default ${SNAPSHOTTER_DEFAULTS.root})`)
    .option('--json', 'print the trace as JSON')
    .action(async (id: string, o: { root?: string; json?: boolean }) => {
      const t = await findTrace(path.join(o.root ?? SNAPSHOTTER_DEFAULTS.root, 'traces'), id);
      process.stdout.write(o.json ? `${JSON.stringify(t, null, 2)}\n` : formatTrace(t));
    });
}
