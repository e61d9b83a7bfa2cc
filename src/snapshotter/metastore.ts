/**
 * Durable, transactional snapshot metadata: the whole model in memory, every
 * mutation a journal record (src/core/state/journal.ts) committed with group commit
 * before the RPC answers. A mutation's puts and deletes are one record, so
 * they are atomic; a crash at any instant leaves a consistent store.
 *
 * (Measured alternative: LMDB. Its synchronous transactions block the event
 * loop for two fsyncs per commit and its asynchronous batches cost 1–17 ms per
 * write under load on this machine; the journal's one synchronous O_DSYNC
 * write is shared by the requests of one event-loop turn. See
 * bench/snapshotter.ts.) Layer facts are not kept here: they live in the
 * shared cache of core/stack (earlier versions journalled them; such records
 * and the `facts` of an old state file are ignored).
 */
import path from 'node:path';
import { FailedPreconditionError, InternalError } from '../core/errors/errors.js';
import { Journal, type JournalOptions } from '../core/state/journal.js';
import type { ChainNode } from '../core/stack/index.js';

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

interface StoreRecord {
  put?: SnapshotRecord[];
  del?: string[];
  nextId: number;
}

interface StoreState {
  schema: number;
  nextId: number;
  snapshots: SnapshotRecord[];
}

export class MetaStore {
  private readonly byName = new Map<string, SnapshotRecord>();
  private readonly childrenOf = new Map<string, Set<string>>();
  private nextId = 1;

  private constructor(private readonly journal: Journal<StoreRecord>) {}

  static async open(dir: string, onFatal: (e: Error) => void, onCommit?: JournalOptions['onCommit'], busy?: JournalOptions['busy']): Promise<MetaStore> {
    const { journal, state, records } = await Journal.open<StoreRecord>({ dir, name: 'metadata', onFatal, onCommit, busy });
    const store = new MetaStore(journal);
    if (state !== null) {
      const st = state as StoreState;
      if (st.schema !== SCHEMA_VERSION) {
        throw new FailedPreconditionError(
          `${path.join(dir, 'metadata.state')}: metadata schema ${String(st.schema)} is not supported (want ${SCHEMA_VERSION})`,
          'CVMFS_THIN_BAD_STATE',
        );
      }
      store.nextId = st.nextId;
      for (const r of st.snapshots) store.apply({ put: [r], nextId: 0 });
    }
    for (const r of records) store.apply(r);
    for (const r of store.byName.values()) if (r.id >= store.nextId) store.nextId = r.id + 1;
    journal.onSnapshot(() => store.snapshot());
    return store;
  }

  private snapshot(): StoreState {
    return { schema: SCHEMA_VERSION, nextId: this.nextId, snapshots: [...this.byName.values()] };
  }

  private apply(rec: StoreRecord): void {
    for (const d of rec.del ?? []) {
      const r = this.byName.get(d);
      if (r) {
        this.byName.delete(d);
        this.delChild(r.parent, d);
      }
    }
    for (const r of rec.put ?? []) {
      const old = this.byName.get(r.name);
      if (old) this.delChild(old.parent, r.name);
      this.byName.set(r.name, r);
      this.addChild(r.parent, r.name);
    }
    if (rec.nextId > this.nextId) this.nextId = rec.nextId;
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

  /** Snapshots by kind and source, every combination (zero included): the `snapshots` gauge. */
  counts(): [Kind, SnapshotRecord['source'], number][] {
    const n = new Map<string, number>();
    for (const r of this.byName.values()) n.set(`${r.kind}/${r.source}`, (n.get(`${r.kind}/${r.source}`) ?? 0) + 1);
    const out: [Kind, SnapshotRecord['source'], number][] = [];
    for (const k of ['active', 'view', 'committed'] as const) for (const s of ['local', 'thin', 'remote'] as const) out.push([k, s, n.get(`${k}/${s}`) ?? 0]);
    return out;
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
   * Apply puts and deletes atomically, in memory once they are durable (in
   * call order, before the promise resolves): a write that fails (a full
   * disk) changes nothing, and readers never see a change that a crash could
   * undo. `del` runs before `put` (Commit = delete key + put name). Callers
   * serialise conflicting writes with their keyed locks.
   */
  write(ops: { put?: SnapshotRecord[]; del?: string[] }): Promise<void> {
    const rec: StoreRecord = { ...ops, nextId: this.nextId };
    return this.journal.append(rec, () => this.apply(rec));
  }

  async close(): Promise<void> {
    await this.journal.close();
  }
}

/** A snapshot as a link in a chain of lowers (core/stack/chain.ts). */
export function chainNode(name: string, r: SnapshotRecord | undefined): ChainNode | undefined {
  if (!r) return undefined;
  const lowers = r.stack.map((link) => {
    const real = r.links[link];
    if (real === undefined) throw new InternalError(`snapshot ${name} lists link ${link} it does not own`, 'CVMFS_THIN_BAD_STATE');
    return { link, real };
  });
  return { parent: r.parent, lowers, external: r.source !== 'local', terminal: r.terminal };
}
