/**
 * What a layer daemon does for a container start beyond its protocol (issue
 * 18), shared by the snapshotter and the graph driver (each an adapter that
 * says which snapshot or layer is a container's and when its part of the
 * start is done): the trace of the start (start-trace.ts), the prefetch of
 * the image's access profile, and — where the image has none and the daemon
 * records (the snapshotter only) — the recording of one from this start.
 * Nothing here delays a start: the profile is looked up, read ahead or
 * recorded beside the daemon's answers, off its threads (the probe helper
 * reads CVMFS), and every failure only costs the prefetch.
 *
 * Profiles: `<repository>/.profiles/<xx>/<stack id>.json` (published with
 * `cvmfs-thin profile publish`), else `<root>/profiles/<stack id>.json`
 * (recorded on this node; read safely and bounded by local-profiles.ts). A
 * recording starts when the container's overlay (the one whose upper dir is
 * the snapshot's) appears in the mount table, lasts `recordWindowMs`, and
 * maps each file to the layer that served it.
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { probeText } from '../host/probe.js';
import { repositoryMountpoint } from '../cvmfs/location.js';
import { writeFileAtomic } from '../fs/fsutil.js';
import type { Host } from '../host/host.js';
import type { Metrics } from '../telemetry/metrics.js';
import { readThinLayer } from '../thin/layer.js';
import { type AccessProfile, PROFILE_SCHEMA, PROFILES_DIR, parseProfile, profilePath, serializeProfile, stackId } from '../thin/profile.js';
import type { ChainLower } from './chain.js';
import type { LayerStack } from './index.js';
import { isImageMount } from './hot-image.js';
import { type KeepLimits, type LiveStacks, LocalProfiles } from './local-profiles.js';
import { overlaysOf } from './mount-health.js';
import { prefetchFiles, type PrefetchOptions, type PrefetchResult } from './prefetch.js';
import { type CvmfsCounters, cvmfsCounters, StartTraces, type StartTrace } from './start-trace.js';

const LAYER_DIR = /\/\.layers\/[0-9a-f]{2}\/([0-9a-f]{64})\/layerfs$/;

export interface StartOptions {
  /** Read an image's access profile ahead at Prepare (default true). */
  prefetch?: boolean | undefined;
  /** Record a profile from a start of an image that has none (default false; needs fanotify: root; the snapshotter only). */
  record?: boolean | undefined;
  recordWindowMs?: number | undefined;
  /** A start whose own phases take longer logs why. */
  budgetMs?: number | undefined;
  prefetchLimits?: Omit<PrefetchOptions, 'signal'> | undefined;
  /** Bounds of the profiles kept in `<root>/profiles` (local-profiles.ts). */
  keep?: Partial<KeepLimits> | undefined;
  /** How long a pull waits for the image's hot layer (its profile's pack, hot.ts; default 1500 ms, 0: none). */
  hotWaitMs?: number | undefined;
  /** Mount a profile's EROFS image as the hot layer when it has one (default true; hot-image.ts). */
  hotImage?: boolean | undefined;
}

interface Outcome {
  /** Where the profile came from (StartTrace.profile). */
  from: string;
  profile: AccessProfile | null;
  prefetch?: PrefetchResult | undefined;
  startedAt: string;
}

interface Image {
  name: string;
  origin?: string | undefined;
  hexes: string[];
  repository: string;
}

interface StartsContext extends StartOptions {
  /** The daemon, as traces and metrics name it. */
  daemon: string;
  /** Holds `traces/` and `profiles/` (recorded on this node); a recording looks for the container's overlay below it. */
  root: string;
  stack: LayerStack;
  host: Host;
  log: Logger;
  metrics: Metrics;
  /** The directory holding a thin image's manifest (its snapshot's or layer's), null for anything else. */
  fsDir: (name: string) => string | null;
  /** The images on the node (a daemon that records): its local profiles are swept at open, after `imageRemoved` and after a recording. */
  liveStacks?: (() => Promise<LiveStacks>) | undefined;
}

/**
 * A container start of a thin image, begun: its trace, and its read-ahead
 * (with the client's counters before it) already running. The adapter may
 * add phases and rename the trace until it ends the daemon's part.
 */
export interface Start {
  readonly trace: StartTrace;
  readonly img: Image;
  readonly dirs: string[];
  readonly ahead: Promise<{ before: CvmfsCounters | null; outcome: Outcome }>;
}

export class Starts {
  /** Resolve timings of thin images resolved by this process (by snapshot name), for the traces of their containers. */
  private readonly resolved = new Map<string, Record<string, number>>();
  private readonly images = new Map<string, Image>();
  /** Read-aheads of the last 10 minutes, by stack id: one per image, joined by its containers. */
  private readonly jobs = new Map<string, { at: number; outcome: Promise<Outcome> }>();
  /** Stacks recorded by this process (once each). */
  private readonly recorded = new Set<string>();
  private readonly ctl = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private readonly local: LocalProfiles;

  private constructor(
    readonly traces: StartTraces,
    private readonly o: StartsContext,
  ) {
    this.local = new LocalProfiles({
      dir: path.join(o.root, 'profiles'),
      log: o.log,
      limits: o.keep,
      live: o.liveStacks,
      published: async (id, repo) => {
        const mp = repositoryMountpoint(o.stack.location, repo ?? o.stack.location.repository);
        const text = await probeText(o.host, path.join(mp, PROFILES_DIR, id.slice(0, 2), `${id}.json`), o.stack.probe.timeoutMs).catch(() => undefined);
        return text === 'stalled' ? undefined : text;
      },
    });
  }

  static async open(o: StartsContext): Promise<Starts> {
    const s = new Starts(await StartTraces.open(path.join(o.root, 'traces'), { daemon: o.daemon, metrics: o.metrics, log: o.log, budgetMs: o.budgetMs }), o);
    s.local.sweep();
    return s;
  }

  /** A thin image left the node (a snapshot of it removed): sweep the local profiles, in the background. */
  imageRemoved(): void {
    this.local.sweep();
  }

  /**
   * A thin image was resolved (its Commit, at pull): keep the timings for its
   * containers' traces, and start reading its profile ahead now — the
   * container that follows finds its files fetched or being fetched.
   */
  thinResolved(name: string, phases: Record<string, number>, dirs: readonly string[]): void {
    this.resolved.set(name, phases);
    if (this.resolved.size > 256) this.resolved.delete(this.resolved.keys().next().value!);
    const img = this.o.prefetch === false ? null : this.image(name);
    if (img)
      this.track(
        this.readAhead(img, dirs).then(() => undefined),
        name,
      );
  }

  private track(job: Promise<void>, what: string): void {
    const j = job.catch((e: unknown) => this.o.log.warn({ err: e, snapshot: what }, 'prefetch/recording failed'));
    this.running.add(j);
    void j.finally(() => this.running.delete(j));
  }

  /**
   * A container's snapshot was prepared over `lowers` (its upper directory
   * `upper`): trace it, and read ahead or record its image's profile in the
   * background.
   */
  prepared(key: string, upper: string, lowers: readonly ChainLower[], phases: Record<string, number>): void {
    const s = this.begin(key, lowers, phases);
    if (s) this.end(s, upper);
  }

  /**
   * A container start over `lowers` begins (null: not over a thin image):
   * its trace is begun and its image's profile read ahead from now, beside
   * the rest of the start. `end` it when the daemon's part is done.
   */
  begin(key: string, lowers: readonly ChainLower[], phases: Record<string, number> = {}): Start | null {
    const thin = lowers.find((l) => l.external)?.owner;
    const img = thin ? this.image(thin) : null;
    if (!img) return null;
    const trace = this.traces.begin(key, {
      image: img.name,
      origin: img.origin,
      layers: img.hexes.length,
      phases: { ...(this.resolved.get(img.name) ?? {}), ...phases },
    });
    const dirs = lowers.filter((l) => l.external).map((l) => l.real);
    const mp = repositoryMountpoint(this.o.stack.location, img.repository);
    const ahead = (async () => {
      const before = await cvmfsCounters(this.o.host, mp);
      return { before, outcome: await this.readAhead(img, dirs) };
    })();
    // waited for by idle() and close(); a failure is logged by the end of the start
    this.track(
      ahead.then(
        () => undefined,
        () => undefined,
      ),
      key,
    );
    return { trace, img, dirs, ahead };
  }

  /**
   * The daemon's part of start `s` is done: its phases go to the histograms
   * and the budget check, its trace is written, and written again once the
   * read-ahead (and a recording, with the container's `upper` directory) ended.
   */
  end(s: Start, upper?: string): void {
    this.traces.prepared(s.trace);
    this.track(this.afterPrepare(s, upper), s.trace.snapshot);
  }

  private image(name: string): Image | null {
    const cached = this.images.get(name);
    if (cached) return cached;
    const dir = this.o.fsDir(name);
    if (!dir) return null;
    try {
      const thin = readThinLayer(dir, this.o.stack.location);
      if (!thin) return null;
      const img = { name, origin: thin.manifest.origin, hexes: thin.manifest.layers.map((l) => l.hex), repository: thin.manifest.layers.at(-1)!.repository };
      this.images.set(name, img);
      if (this.images.size > 256) this.images.delete(this.images.keys().next().value!);
      return img;
    } catch {
      return null;
    }
  }

  /** The image's profile read ahead: the one of the last 10 minutes (running or done), else a new one. */
  private readAhead(img: Image, dirs: readonly string[]): Promise<Outcome> {
    const id = stackId(img.hexes);
    const now = Date.now();
    const j = this.jobs.get(id);
    if (j && now - j.at < 600_000) return j.outcome;
    for (const [k, v] of this.jobs) if (now - v.at >= 600_000) this.jobs.delete(k);
    const outcome = (async (): Promise<Outcome> => {
      const startedAt = new Date().toISOString();
      const { profile, from } = await this.findProfile(img, repositoryMountpoint(this.o.stack.location, img.repository));
      if (!profile?.prefetch || this.o.prefetch === false) return { from, profile, startedAt };
      const byHex = new Map<string, string>();
      let chain: string | undefined;
      // the files of the image's hot layer are read from local disk: not fetched again
      const hot = dirs.find((d) => path.basename(d) === `hot-${id}`);
      for (const d of dirs) {
        const m = LAYER_DIR.exec(d);
        if (m) byHex.set(m[1]!, d);
        else if (d.includes('/.chains/')) chain ??= d;
      }
      const files = profile.files.flatMap((f) => {
        const base = f.layer ? (byHex.get(f.layer) ?? chain) : chain;
        return base && !(hot && existsSync(path.join(hot, f.path))) ? [{ path: path.join(base, f.path), size: f.size }] : [];
      });
      const prefetch = await prefetchFiles(this.o.host, files, { ...this.o.prefetchLimits, signal: this.ctl.signal });
      // a stale profile (most files gone): looked up again, and learnt again by a recording node, next time
      if (prefetch.missing > files.length / 2) this.jobs.delete(id);
      return { from, profile, prefetch, startedAt };
    })();
    this.jobs.set(id, { at: now, outcome });
    return outcome;
  }

  private async afterPrepare({ trace: t, img, dirs, ahead }: Start, upper: string | undefined): Promise<void> {
    const id = stackId(img.hexes);
    const mp = repositoryMountpoint(this.o.stack.location, img.repository);
    const { before, outcome: o } = await ahead;
    if (before) t.cvmfs = { before };
    // the image's hot layer (hot.ts) is among its lowers: its files are read from local disk, or from its image
    const hot = dirs.find((d) => path.basename(d) === `hot-${id}`);
    const form = hot && ((await isImageMount(hot)) ? "the profile's image, mounted from CVMFS" : "the profile's pack, on local disk");
    t.profile = form ? `${o.from}; hot layer (${form})` : o.from;
    t.prefetch = o.prefetch;
    t.prefetchStarted = o.startedAt;
    const stale = o.prefetch !== undefined && o.prefetch.missing > o.prefetch.files;
    if ((!o.profile || stale) && this.o.record === true && upper !== undefined && !this.recorded.has(id)) {
      this.recorded.add(id);
      t.record = await this.record(id, img, upper, dirs);
    }
    const after = before ? await cvmfsCounters(this.o.host, mp) : null;
    if (t.cvmfs && after) t.cvmfs.after = after;
    this.traces.finished(t);
  }

  private async findProfile(img: Image, mp: string): Promise<{ profile: AccessProfile | null; from: string }> {
    const candidates: [string, string][] = [
      [path.join(mp, profilePath(img.hexes)), 'repository'],
      [path.join(this.o.root, 'profiles', `${stackId(img.hexes)}.json`), 'local'],
    ];
    for (const [file, from] of candidates) {
      let text: string | null;
      try {
        if (from === 'local') {
          const r = await this.local.read(stackId(img.hexes));
          if (typeof r === 'string') return { profile: null, from: `invalid: ${file} ${r} (left alone)` };
          text = r?.text ?? null;
        } else {
          const t = await probeText(this.o.host, file, this.o.stack.probe.timeoutMs);
          if (t === 'stalled')
            return { profile: null, from: `unavailable: ${file} did not answer within ${this.o.stack.probe.timeoutMs / 1000} s (cvmfs-timeout)` };
          text = t;
        }
      } catch {
        continue;
      }
      if (text === null) continue;
      try {
        const p = parseProfile(text);
        if (p.layers.join() !== img.hexes.join()) return { profile: null, from: `invalid: ${file} is for other layers` };
        return { profile: p, from: p.prefetch ? from : `disabled (${from})` };
      } catch (e) {
        this.o.log.warn({ file, err: (e as Error).message }, 'access profile not valid; starting without prefetch');
        return { profile: null, from: `invalid: ${(e as Error).message}` };
      }
    }
    return { profile: null, from: 'none' };
  }

  /** Wait for the container's overlay, record its opens, map them to layers, save the profile locally. */
  private async record(id: string, img: Image, upper: string, dirs: string[]): Promise<StartTrace['record']> {
    const t0 = Date.now();
    let mountpoint: string | undefined;
    while (!mountpoint && Date.now() - t0 < 30_000 && !this.ctl.signal.aborted) {
      mountpoint = overlaysOf(this.o.host.mountinfo(), this.o.root).find((m) => m.upper === upper)?.mountPoint;
      if (!mountpoint) await new Promise((r) => setTimeout(r, 20));
    }
    if (!mountpoint) return { files: 0, reason: 'the container was not mounted within 30 s', ms: Date.now() - t0 };
    const { recordAccesses } = await import('./access-recorder.js');
    let rec;
    try {
      rec = await recordAccesses(this.o.host, mountpoint, {
        windowMs: this.o.recordWindowMs ?? 10_000,
        idleMs: 2_000,
        maxFiles: 5_000,
        signal: this.ctl.signal,
      });
    } catch (e) {
      return { files: 0, reason: 'cannot record', ms: Date.now() - t0, error: (e as Error).message };
    }
    // the topmost layer holding each file served it: one probe per layer for the files not placed yet
    const left = new Map(rec.files.map((f) => [f.path.replace(/^\/+/, ''), f]));
    const placed = new Map<string, string | undefined>();
    for (const d of dirs) {
      if (left.size === 0) break;
      const hex = LAYER_DIR.exec(d)?.[1];
      const names = [...left.keys()];
      const answers = await this.o.host.probeFs(names.map((n) => ({ op: 'stat' as const, path: path.join(d, n) })));
      answers.forEach((a, i) => {
        if (a.ok && a.dir === false) {
          placed.set(names[i]!, hex);
          left.delete(names[i]!);
        }
      });
    }
    const profile: AccessProfile = {
      schema: PROFILE_SCHEMA,
      version: 1,
      layers: img.hexes,
      prefetch: true,
      created: new Date().toISOString(),
      source: `recorded on a node from the start of ${img.origin ?? img.name} (${rec.reason})`,
      files: rec.files.flatMap((f) => {
        const p = f.path.replace(/^\/+/, '');
        return placed.has(p) ? [{ path: p, layer: placed.get(p), size: f.size, at: Math.round(f.atMs) }] : [];
      }),
    };
    const file = path.join(this.o.root, 'profiles', `${id}.json`);
    await fsp.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await writeFileAtomic(file, serializeProfile(profile));
    this.o.log.info(
      { image: img.origin ?? img.name, files: profile.files.length, file },
      'recorded an access profile (publish it with cvmfs-thin profile publish)',
    );
    this.local.sweep(); // the cap
    return { files: profile.files.length, reason: rec.reason, ms: Date.now() - t0, saved: file };
  }

  /** Wait for the prefetches and recordings running now, and the trace files (tests). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running]);
    await this.local.idle();
    await this.traces.flush();
  }

  /**
   * Stop prefetches and recordings and wait for them — at most 2 s: one stuck
   * in a stalled CVMFS (a getfattr, a read) must not hold the daemon's stop.
   */
  async close(): Promise<void> {
    this.ctl.abort();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all([...this.running, this.local.close()]), new Promise((r) => (timer = setTimeout(r, 2000)))]);
    clearTimeout(timer);
    await this.traces.flush();
  }
}
