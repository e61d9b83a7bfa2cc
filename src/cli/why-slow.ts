/**
 * `cvmfs-thin why-slow <container>`: where the time of one container start
 * went, from the snapshotter's or the graph driver's trace of it
 * (core/stack/start-trace.ts): the phases of the daemon's own work, the
 * image's access profile and its prefetch, and what the CVMFS client fetched
 * meanwhile.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import { InvalidArgumentError, NotFoundError } from '../core/errors/errors.js';
import { type StartTrace, traceFile, verdictOf } from '../core/stack/start-trace.js';
import { GRAPHDRIVER_DEFAULTS } from './graphdriver.js';
import { SNAPSHOTTER_DEFAULTS } from './snapshotter.js';

const PHASES: Record<string, string> = {
  resolve: "the thin image's CVMFS layers resolved (at pull)",
  cvmfs: "the container's CVMFS layers checked (probe helper)",
  dirs: 'its upper and work directories made',
  journal: 'its record written (fsync)',
  create: 'its init and container layers made (graph driver)',
  mount: 'their overlays mounted (graph driver)',
};

/** The graph driver's keys: `<container ID>/<layer ID>` (graphdriver/starts.ts). */
const DOCKER_KEY = /^[0-9a-f]{64}\/[0-9a-f]{64}$/;

/**
 * The trace of `id` in `dirs` (the daemons' traces directories): a snapshot
 * key as the snapshotter saw it (containerd's `<namespace>/<n>/<key>`), the
 * key containerd was given (the container ID for ctr and the CRI), for the
 * graph driver the Docker container ID or dockerd's layer ID, or a unique
 * prefix of those.
 */
export async function findTrace(dirs: string | readonly string[], id: string): Promise<StartTrace> {
  if (id === '') throw new InvalidArgumentError('give a container ID or snapshot key', 'CVMFS_THIN_BAD_FLAG');
  const all = typeof dirs === 'string' ? [dirs] : dirs;
  const read = async (f: string) => JSON.parse(await fsp.readFile(f, 'utf8')) as StartTrace;
  for (const dir of all) {
    try {
      return await read(traceFile(dir, id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  const keys: { file: string; key: string }[] = [];
  let listed = 0;
  for (const dir of all) {
    try {
      for (const n of await fsp.readdir(dir)) if (n.endsWith('.json')) keys.push({ file: path.join(dir, n), key: decodeURIComponent(n.slice(0, -5)) });
      listed++;
    } catch {
      /* not this daemon's */
    }
  }
  const dir = all.join(' or ');
  if (listed === 0)
    throw new NotFoundError(`no start traces in ${dir} (is this the snapshotter's root, --root, or the graph driver's state directory, --state-dir?)`);
  const ids = (k: string) => (DOCKER_KEY.test(k) ? k.split('/') : [k.slice(k.lastIndexOf('/') + 1)]);
  const tiers = [(k: string) => ids(k).includes(id), (k: string) => ids(k).some((x) => x.startsWith(id)), (k: string) => k.startsWith(id)];
  for (const match of tiers) {
    const hits = keys.filter((x) => match(x.key));
    if (hits.length === 1) return read(hits[0]!.file);
    if (hits.length > 1)
      throw new InvalidArgumentError(
        `${JSON.stringify(id)} matches ${hits.length} starts (${hits
          .slice(0, 5)
          .map((h) => h.key)
          .join(', ')}…): give more of it`,
        'CVMFS_THIN_BAD_FLAG',
      );
  }
  throw new NotFoundError(`no trace of a start of ${JSON.stringify(id)} in ${dir} (the newest 500 starts of containers of thin images are kept)`);
}

const kib = (n: number) => (n >= 1024 ? `${(n / 1024).toFixed(1)} MiB` : `${n} KiB`);

export function formatTrace(t: StartTrace): string {
  const out = [
    `start of ${t.snapshot} (${t.daemon}) at ${t.started}: image ${t.origin ?? '?'} (${t.daemon === 'graphdriver' ? 'layer' : 'snapshot'} ${t.image ?? '?'}), ${t.layers} layer(s)`,
  ];
  if (t.container !== undefined) out.push(`  container: ${t.container}`);
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
      "print where the time of a container start went: the snapshotter's or graph driver's phases, the image's access profile and prefetch, what the CVMFS client fetched",
    )
    .argument(
      '<container>',
      'container ID (the snapshot key ctr and the CRI use; the Docker container ID, or the graph driver layer ID), or a unique prefix of it',
    )
    .option('--root <dir>', `the snapshotter's state directory (default ${SNAPSHOTTER_DEFAULTS.root})`)
    .option(
      '--state-dir <dir>',
      `the graph driver's state directory (default ${GRAPHDRIVER_DEFAULTS.stateDir}); without either option, both defaults are searched`,
    )
    .option('--json', 'print the trace as JSON')
    .action(async (id: string, o: { root?: string; stateDir?: string; json?: boolean }) => {
      const roots = o.root !== undefined || o.stateDir !== undefined ? [o.root, o.stateDir] : [SNAPSHOTTER_DEFAULTS.root, GRAPHDRIVER_DEFAULTS.stateDir];
      const t = await findTrace(
        roots.flatMap((r) => (r === undefined ? [] : [path.join(r, 'traces')])),
        id,
      );
      process.stdout.write(o.json ? `${JSON.stringify(t, null, 2)}\n` : formatTrace(t));
    });
}
