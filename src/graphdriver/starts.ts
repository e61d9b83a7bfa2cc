/**
 * The graph driver's adapter to the container starts both layer daemons
 * share (core/stack/starts.ts: a trace of every start, the image's access
 * profile read ahead). dockerd starts a container in calls the driver sees:
 * CreateReadWrite of `<m>-init` over the image's top layer, Get and Put of it
 * (dockerd writes /etc/hosts and the like), CreateReadWrite of the container
 * layer `<m>` over that (docker create), then Get of `<m>` (docker start: the
 * container's root mounted). The start begins at the first of those over a
 * thin image — its trace, and the read-ahead beside the rest of the start —
 * and the driver's part ends at the first Get of `<m>`. Its phases are the
 * driver's own work in between: `create` (both layers' directories and
 * records), `cvmfs` (the CVMFS check of their lowers), `mount` (their
 * overlays), and `resolve` (the image's thin manifest, at its ApplyDiff).
 * A container created and removed without a start has no trace.
 *
 * `<m>` is dockerd's random mount ID, not the container ID. dockerd keeps the
 * container → mount ID map in its layer database beside the Home it gave at
 * Init (`<root>/<driver>`): `<root>/image/<driver>/layerdb/mounts/<container
 * ID>/mount-id`. When that is readable (a legacy plugin on the host; not a
 * managed plugin, which sees only its propagated mount) a trace's key is
 * `<container ID>/<m>`, so `cvmfs-thin why-slow` finds it by the container ID,
 * a prefix of it, or the layer ID; else `<m>`. Traces and profiles kept on
 * this node live in the state directory; profiles are not recorded here.
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { chainLowers } from '../core/stack/chain.js';
import type { LayerStack } from '../core/stack/index.js';
import { type Start, Starts } from '../core/stack/starts.js';
import { noMetrics } from '../core/telemetry/metrics.js';
import type { GraphDriverConfig } from './config.js';
import type { LayerStore } from './layer-store.js';

/** Starts begun and not mounted yet, at most (the oldest is forgotten; its read-ahead runs on). */
const MAX_PENDING = 256;

const startKey = (id: string) => (id.endsWith('-init') ? id.slice(0, -'-init'.length) : id);

export class DockerStarts {
  /** By container layer ID (`<m>`). */
  private readonly pending = new Map<string, Start>();
  private readonly ending = new Set<Promise<void>>();
  private readonly ids: MountIds;

  private constructor(
    readonly starts: Starts,
    private readonly store: LayerStore,
    home: string,
    private readonly log: Logger,
  ) {
    this.ids = new MountIds(home);
  }

  static async open(cfg: GraphDriverConfig, home: string, store: LayerStore, stack: LayerStack): Promise<DockerStarts> {
    const starts = await Starts.open({
      ...cfg.starts,
      record: false,
      daemon: 'graphdriver',
      root: cfg.stateDir,
      stack,
      host: cfg.host,
      log: cfg.log,
      metrics: cfg.metrics ?? noMetrics,
      fsDir: (id) => (store.get(id)?.rec.thin ? store.diffDir(id) : null),
    });
    return new DockerStarts(starts, store, home, cfg.log);
  }

  /** A thin image's layer was applied (its manifest resolved in `ms`, into `dirs`): read its profile ahead from now. */
  thinApplied(id: string, ms: number, dirs: readonly string[]): void {
    this.starts.thinResolved(id, { resolve: round(ms) }, dirs);
  }

  /** A read-write layer was created over `parent` in `ms`: a container's start begins, or goes on. */
  created(id: string, parent: string, ms: number): void {
    const key = startKey(id);
    let s = this.pending.get(key);
    if (!s) {
      try {
        s = this.starts.begin(key, chainLowers(this.store.node, parent, 'layer')) ?? undefined;
      } catch (e) {
        this.log.warn({ err: e, id }, 'cannot trace the start of a container');
      }
      if (!s) return;
      this.pending.set(key, s);
      if (this.pending.size > MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
    }
    add(s, { create: ms });
  }

  /** Layer `id` was mounted (Get; `phases`: its CVMFS check and overlay mount): the first of the container layer ends the driver's part. */
  mounted(id: string, phases: Record<string, number>): void {
    const key = startKey(id);
    const s = this.pending.get(key);
    if (!s) return;
    add(s, phases);
    if (id !== key) return;
    this.pending.delete(key);
    const job = this.end(s, key).catch((e: unknown) => this.log.warn({ err: e, id }, 'cannot end the trace of a start'));
    this.ending.add(job);
    void job.finally(() => this.ending.delete(job));
  }

  removed(id: string): void {
    this.pending.delete(startKey(id));
  }

  private async end(s: Start, layer: string): Promise<void> {
    const container = await this.ids.containerOf(layer);
    if (container) {
      s.trace.snapshot = `${container}/${layer}`;
      s.trace.container = container;
    }
    this.starts.end(s);
  }

  /** Wait for the starts' background work and trace files (tests, benches). */
  async idle(): Promise<void> {
    while (this.ending.size > 0) await Promise.all([...this.ending]);
    await this.starts.idle();
  }

  async close(): Promise<void> {
    await Promise.all([...this.ending]);
    await this.starts.close();
  }
}

function add(s: Start, phases: Record<string, number>): void {
  for (const [k, v] of Object.entries(phases)) s.trace.phases[k] = round((s.trace.phases[k] ?? 0) + v);
}

const round = (x: number) => Math.round(x * 100) / 100;

/** dockerd's container → mount ID map, read from its layer database beside Home (best effort). */
class MountIds {
  private dir: string | null | undefined;
  /** Container ID → mount ID, of the containers seen. */
  private readonly seen = new Map<string, string>();

  constructor(private readonly home: string) {}

  /** `<root>/image/<driver>/layerdb/mounts` for a Home `<root>/<driver>` (a driver name may hold slashes). */
  private mountsDir(): string | null {
    if (this.dir !== undefined) return this.dir;
    const parts = this.home.split('/');
    for (let k = 1; k <= 3 && k < parts.length - 1; k++) {
      const d = path.join(parts.slice(0, -k).join('/') || '/', 'image', ...parts.slice(-k), 'layerdb', 'mounts');
      if (existsSync(d)) return (this.dir = d);
    }
    return null; // dockerd makes it after Init, at its first start: asked again next time
  }

  async containerOf(mountId: string): Promise<string | undefined> {
    const dir = this.mountsDir();
    if (!dir) return undefined;
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    const live = new Set(names);
    for (const c of this.seen.keys()) if (!live.has(c)) this.seen.delete(c);
    for (const c of names) {
      if (this.seen.has(c)) continue;
      const m = (await fsp.readFile(path.join(dir, c, 'mount-id'), 'utf8').catch(() => '')).trim();
      if (m !== '') this.seen.set(c, m);
    }
    for (const [c, m] of this.seen) if (m === mountId) return c;
    return undefined;
  }
}
