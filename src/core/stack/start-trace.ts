/**
 * A trace of every container start (issue 18): where the time of a start went
 * — thin-image resolution, the Prepare of the container's snapshot (the
 * CVMFS check of its layers, directories, journal), the prefetch of its access
 * profile, the recording of a new one — and what the CVMFS client did
 * meanwhile (files downloaded, bytes from the network, catalogs loaded: the
 * client's `user.ndownload`, `user.rx`, `user.nclg` attributes, read with
 * getfattr by the Host's probe helper, off the daemon's process). Each start is one JSON file under
 * `<root>/traces/` (the newest MAX_TRACES kept), read by `cvmfs-thin
 * why-slow`; its phases are Prometheus histograms; a start over the
 * configured budget logs why.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import { probeWithin } from '../host/probe.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { PrefetchResult } from './prefetch.js';

export const TRACE_SCHEMA = 'cvmfs-thin/start-trace';
const MAX_TRACES = 500;

export interface CvmfsCounters {
  /** Files downloaded since the client started. */
  downloads: number;
  /** KiB received from the network. */
  rxKiB: number;
  /** Catalogs loaded now. */
  catalogs: number;
}

export interface StartTrace {
  schema: typeof TRACE_SCHEMA;
  version: 1;
  /** The container's snapshot key (the container ID for ctr and CRI); the graph driver's: `<container ID>/<layer ID>`, or the layer ID. */
  snapshot: string;
  /** The container ID, when the daemon is given another key (dockerd's layer IDs: graphdriver/starts.ts). */
  container?: string | undefined;
  daemon: string;
  /** The thin image's snapshot and what it came from. */
  image?: string | undefined;
  origin?: string | undefined;
  started: string;
  layers: number;
  /** ms per phase of the daemon's own work (resolve: the image's, when this daemon resolved it). */
  phases: Record<string, number>;
  /** Where the access profile came from: repository, local, none, disabled, or invalid: <why>. */
  profile?: string | undefined;
  prefetch?: PrefetchResult | undefined;
  /** When the read-ahead started: at the image's pull (Commit) or at an earlier container's start. */
  prefetchStarted?: string | undefined;
  record?: { files: number; reason: string; ms: number; saved?: string | undefined; error?: string | undefined } | undefined;
  cvmfs?: { before: CvmfsCounters; after?: CvmfsCounters | undefined } | undefined;
  budgetMs?: number | undefined;
  /** Why it was slow, or "within budget". */
  verdict?: string | undefined;
}

/** A file name for a snapshot key (keys are free text). */
export function traceFile(dir: string, key: string): string {
  return path.join(dir, `${encodeURIComponent(key).replace(/^\./, '%2E').slice(0, 200)}.json`);
}

/** The CVMFS client's counters of the repository mounted at `mp`, read by `host`'s probe helper (null: not CVMFS, no getfattr, or no answer in time). */
export async function cvmfsCounters(host: Host, mp: string, timeoutMs = 2000): Promise<CvmfsCounters | null> {
  // a getfattr stuck in a stalled FUSE holds the helper, not us: null at the deadline
  const r = await probeWithin(host, [{ op: 'counters', path: mp }], timeoutMs).catch(() => null);
  const a = r === 'stalled' ? null : r?.[0];
  if (!a?.ok || a.text === undefined) return null;
  const text = a.text;
  const v = (k: string) => Number(/^user\.(\w+)="?(\d+)"?$/m.exec(text.split('\n').find((l) => l.startsWith(`user.${k}=`)) ?? '')?.[2] ?? NaN);
  const c = { downloads: v('ndownload'), rxKiB: v('rx'), catalogs: v('nclg') };
  return Object.values(c).every(Number.isFinite) ? c : null;
}

/** Human verdict: the slowest phases, and what the client fetched. */
export function verdictOf(t: StartTrace): string {
  const total = Object.values(t.phases).reduce((a, b) => a + b, 0);
  const top = Object.entries(t.phases)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 2)
    .map(([k, v]) => `${k} ${v.toFixed(1)} ms`);
  const parts = [`${total.toFixed(1)} ms of our own work (${top.join(', ')})`];
  if (t.cvmfs?.after) {
    const d = t.cvmfs.after.downloads - t.cvmfs.before.downloads;
    parts.push(
      `CVMFS downloaded ${d} file(s), ${t.cvmfs.after.rxKiB - t.cvmfs.before.rxKiB} KiB, catalogs loaded ${t.cvmfs.before.catalogs} -> ${t.cvmfs.after.catalogs}`,
    );
  }
  if (t.prefetch)
    parts.push(
      `prefetch read ${t.prefetch.files} file(s), ${Math.round(t.prefetch.bytes / 1024)} KiB in ${t.prefetch.ms} ms${t.prefetch.stopped ? ` (stopped: ${t.prefetch.stopped})` : ''}`,
    );
  else if (t.profile) parts.push(`no prefetch (profile: ${t.profile})`);
  if (t.budgetMs !== undefined) parts.unshift(total > t.budgetMs ? `over the ${t.budgetMs} ms budget` : 'within budget');
  return parts.join('; ');
}

export class StartTraces {
  private writes: Promise<void> = Promise.resolve();

  constructor(
    readonly dir: string,
    private readonly o: { daemon: string; metrics: Metrics; log: Logger; budgetMs?: number | undefined },
  ) {}

  static async open(dir: string, o: ConstructorParameters<typeof StartTraces>[1]): Promise<StartTraces> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    return new StartTraces(dir, o);
  }

  begin(snapshot: string, fields: Partial<StartTrace> = {}): StartTrace {
    return {
      schema: TRACE_SCHEMA,
      version: 1,
      snapshot,
      daemon: this.o.daemon,
      started: new Date().toISOString(),
      layers: 0,
      phases: {},
      ...fields,
      budgetMs: this.o.budgetMs,
    };
  }

  /** The daemon's part of the start is done: histograms, the budget check, the file. */
  prepared(t: StartTrace): void {
    for (const [phase, ms] of Object.entries(t.phases)) this.o.metrics.observe('start_phase_seconds', { daemon: this.o.daemon, phase }, ms / 1000);
    const total = Object.values(t.phases).reduce((a, b) => a + b, 0);
    if (t.budgetMs !== undefined && total > t.budgetMs) {
      t.verdict = verdictOf(t);
      this.o.log.warn({ snapshot: t.snapshot, image: t.image, phases: t.phases, layers: t.layers }, `slow start: ${t.verdict}`);
    }
    this.save(t);
  }

  /** Prefetch and recording end later: the trace is written again with them. */
  finished(t: StartTrace): void {
    if (t.prefetch) {
      this.o.metrics.observe('start_phase_seconds', { daemon: this.o.daemon, phase: 'prefetch' }, t.prefetch.ms / 1000);
      this.o.metrics.inc('prefetch_files_total', { result: 'read' }, t.prefetch.files);
      this.o.metrics.inc('prefetch_files_total', { result: 'missing' }, t.prefetch.missing);
      this.o.metrics.inc('prefetch_files_total', { result: 'failed' }, t.prefetch.failed);
      this.o.metrics.inc('prefetch_bytes_total', {}, t.prefetch.bytes);
    }
    if (t.cvmfs?.after) this.o.metrics.inc('start_cvmfs_download_bytes_total', {}, Math.max(0, t.cvmfs.after.rxKiB - t.cvmfs.before.rxKiB) * 1024);
    t.verdict = verdictOf(t);
    this.save(t);
  }

  /** Writes one after another (a trace's later version never loses to its earlier one); old files pruned. */
  private save(t: StartTrace): void {
    const snap = structuredClone(t);
    this.writes = this.writes
      .then(async () => {
        await writeFileAtomic(traceFile(this.dir, t.snapshot), `${JSON.stringify(snap, null, 1)}\n`);
        await this.prune();
      })
      .catch((e: unknown) => this.o.log.warn({ err: e, snapshot: t.snapshot }, 'cannot write the start trace'));
  }

  private async prune(): Promise<void> {
    const names = (await fsp.readdir(this.dir)).filter((n) => n.endsWith('.json'));
    if (names.length <= MAX_TRACES) return;
    const st = await Promise.all(names.map(async (n) => ({ n, m: (await fsp.stat(path.join(this.dir, n)).catch(() => null))?.mtimeMs ?? 0 })));
    st.sort((a, b) => a.m - b.m);
    for (const { n } of st.slice(0, st.length - MAX_TRACES)) await fsp.rm(path.join(this.dir, n), { force: true });
  }

  /** Wait for the trace files (tests, stop). */
  flush(): Promise<void> {
    return this.writes;
  }
}
