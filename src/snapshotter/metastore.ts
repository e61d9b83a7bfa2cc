/**
 * Durable, transactional snapshot metadata on LMDB (the bbolt-like store
 * libs.md picked), with the whole model kept in memory for reads.
 *
 * Every mutation is one LMDB batch: all of its puts/deletes commit atomically
 * and are fsync'd before `write()` resolves; batches issued while another is
 * being committed are merged into the next commit (group commit), which is what
 * lets concurrent clients share an fsync. The in-memory model is updated when
 * `write()` is called, in call order; a failed durable commit stops the process
 * (the store on disk stays consistent; a restart reloads it).
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import type { LayerFacts, LayerFactsCache } from '../core/cvmfs/layers.js';

export type Kind = 'active' | 'view' | 'committed';
/** [seconds, nanoseconds] since the Unix epoch. */
export type Time = [number, number];

export interface SnapshotRecord {
  /** Name (committed) or key (active/view). */
  name: string;
  kind: Kind;
  parent: string;
  /** Data directory id: snapshots/<id>; kept by Commit. */
  id: number;
  created: Time;
  updated: Time;
  labels: Record<string, string>;
  /** Usage stored at Commit. */
  size: number;
  inodes: number;
  /** Short links owned by this snapshot: name under l/ → target directory. */
  links: Record<string, string>;
  /** Link names this (committed) snapshot contributes to its children's lowerdir, top first. */
  stack: string[];
  /** The stack is complete: do not descend to the parent (thin images, DUCC chains). */
  terminal: boolean;
  /** How the content is provided. */
  source: 'local' | 'thin' | 'remote';
  /** For remote snapshots: the layer blob digest they serve. */
  layerDigest?: string;
  /** For thin snapshots: the origin recorded in thin.json. */
  origin?: string;
}

const SCHEMA_VERSION = 1;

export class MetaStore {
  private readonly byName = new Map<string, SnapshotRecord>();
  private readonly childrenOf = new Map<string, Set<string>>();
  private readonly layerFacts = new Map<string, LayerFacts>();
  private nextId = 1;
  private failed: Error | null = null;

  private constructor(
    private readonly env: RootDatabase,
    private readonly snaps: Database<SnapshotRecord, string>,
    private readonly meta: Database<unknown, string>,
    private readonly layers: Database<LayerFacts, string>,
    private readonly onFatal: (e: Error) => void,
  ) {}

  static async open(dir: string, onFatal: (e: Error) => void): Promise<MetaStore> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const env = open({ path: path.join(dir, 'metadata.lmdb'), compression: false, noSubdir: false, maxDbs: 8 });
    const store = new MetaStore(
      env,
      env.openDB<SnapshotRecord, string>({ name: 'snapshots' }),
      env.openDB<unknown, string>({ name: 'meta' }),
      env.openDB<LayerFacts, string>({ name: 'layers' }),
      onFatal,
    );
    const v = store.meta.get('schema');
    if (v === undefined) await store.meta.put('schema', SCHEMA_VERSION);
    else if (v !== SCHEMA_VERSION) throw new Error(`metadata schema ${String(v)} in ${dir} is not supported (want ${SCHEMA_VERSION})`);
    const n = store.meta.get('nextId');
    if (typeof n === 'number') store.nextId = n;
    for (const { key, value } of store.snaps.getRange()) {
      store.byName.set(key, value);
      store.addChild(value.parent, key);
      if (value.id >= store.nextId) store.nextId = value.id + 1;
    }
    for (const { key, value } of store.layers.getRange()) store.layerFacts.set(key, value);
    return store;
  }

  static exists(dir: string): boolean {
    return existsSync(path.join(dir, 'metadata.lmdb'));
  }

  /** Children by parent name; parentless snapshots are listed under "". */
  private addChild(parent: string, child: string) {
    let s = this.childrenOf.get(parent);
    if (!s) this.childrenOf.set(parent, (s = new Set()));
    s.add(child);
  }

  private delChild(parent: string, child: string) {
    const s = this.childrenOf.get(parent);
    if (!s) return;
    s.delete(child);
    if (s.size === 0) this.childrenOf.delete(parent);
  }

  get(name: string): SnapshotRecord | undefined {
    return this.byName.get(name);
  }

  all(): IterableIterator<SnapshotRecord> {
    return this.byName.values();
  }

  get size(): number {
    return this.byName.size;
  }

  /** Names of the snapshots whose parent is `name` ("" = parentless ones). */
  children(name: string): ReadonlySet<string> {
    return this.childrenOf.get(name) ?? new Set();
  }

  /** Reserve an id (data directory, link name). Persisted with the next write. */
  allocId(): number {
    return this.nextId++;
  }

  /** Ensure future ids are above `n` (directories found on disk after a crash). */
  bumpNextId(n: number): void {
    if (n >= this.nextId) this.nextId = n + 1;
  }

  /**
   * Apply puts and deletes atomically: in memory now, durably when the promise
   * resolves. `del` runs before `put` (Commit = delete key + put name).
   */
  write(ops: { put?: SnapshotRecord[]; del?: string[] }): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    for (const d of ops.del ?? []) {
      const r = this.byName.get(d);
      if (r) {
        this.byName.delete(d);
        this.delChild(r.parent, d);
      }
    }
    for (const r of ops.put ?? []) {
      const old = this.byName.get(r.name);
      if (old) this.delChild(old.parent, r.name);
      this.byName.set(r.name, r);
      this.addChild(r.parent, r.name);
    }
    const nextId = this.nextId;
    return this.env
      .batch(() => {
        for (const d of ops.del ?? []) this.snaps.remove(d);
        for (const r of ops.put ?? []) this.snaps.put(r.name, r);
        this.meta.put('nextId', nextId);
      })
      .then(
        () => undefined,
        (e: unknown) => {
          const err = e instanceof Error ? e : new Error(String(e));
          this.failed = err;
          this.onFatal(err);
          throw err;
        },
      );
  }

  /** Facts about CVMFS layer directories: derived data, safe to lose (a lost entry means a rescan). */
  readonly layersCache: LayerFactsCache = {
    get: (key) => this.layerFacts.get(key),
    put: async (key, facts) => {
      this.layerFacts.set(key, facts);
      await this.layers.put(key, facts);
    },
  };
  async dropFacts(key: string): Promise<void> {
    this.layerFacts.delete(key);
    await this.layers.remove(key);
  }
  allFacts(): IterableIterator<[string, LayerFacts]> {
    return this.layerFacts.entries();
  }

  async close(): Promise<void> {
    await this.env.close();
  }
}
