/**
 * Snapshot records with containerd's semantics, as snapshots/storage sits
 * under snapshots/overlay: which snapshot may be created, committed, removed
 * or updated, the records that makes (kind, times, labels), and the Info the
 * API answers. Over the journal (metastore.ts); no directories, mounts or
 * locks: the snapshotter (snapshotter.ts) holds the locks, makes the
 * directories and mounts, and calls in here.
 */
import type { Usage } from '../core/fs/fsutil.js';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../core/errors/errors.js';
import { cleanLabels, Clock, updatedLabels } from './labels.js';
import type { MetaStore, SnapshotRecord } from './metastore.js';
import type { Info } from './options.js';

export class SnapshotStorage {
  readonly clock = new Clock();

  constructor(private readonly store: MetaStore) {}

  info(r: SnapshotRecord): Info {
    return { name: r.name, parent: r.parent, kind: r.kind, created: r.created, updated: r.updated, labels: { ...r.labels } };
  }

  must(name: string): SnapshotRecord {
    const r = this.store.get(name);
    if (!r) throw new NotFoundError(`snapshot ${name} does not exist`, 'CVMFS_THIN_NO_SUCH_SNAPSHOT');
    return r;
  }

  /** A new snapshot `key` over `parent`: the key is free, the parent committed. */
  checkNew(key: string, parent: string): void {
    if (this.store.get(key)) throw new AlreadyExistsError(`snapshot ${key} already exists`);
    if (parent !== '') {
      const p = this.store.get(parent);
      if (!p) throw new NotFoundError(`parent snapshot ${parent} does not exist`, 'CVMFS_THIN_NO_SUCH_SNAPSHOT');
      if (p.kind !== 'committed') throw new InvalidArgumentError(`parent ${parent} is not a committed snapshot (it is ${p.kind})`, 'CVMFS_THIN_BAD_REQUEST');
    }
  }

  /** The record of a new active snapshot or view (its directory `id`, the links it owns). */
  newRecord(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>, id: number, links: Record<string, string>): SnapshotRecord {
    const now = this.clock.now();
    return {
      name: key,
      kind,
      parent,
      id,
      created: now,
      updated: now,
      labels: cleanLabels(labels),
      size: 0,
      inodes: 0,
      links,
      stack: [],
      terminal: false,
      source: 'local',
    };
  }

  /** The active snapshot `key` that may be committed as `name` (containerd's rebase is refused). */
  toCommit(name: string, key: string, rebaseParent: string): SnapshotRecord {
    if (this.store.get(name)) throw new AlreadyExistsError(`snapshot ${name} already exists`);
    const r = this.store.get(key);
    if (!r) throw new NotFoundError(`snapshot ${key} does not exist`, 'CVMFS_THIN_NO_SUCH_SNAPSHOT');
    if (r.kind !== 'active')
      throw new FailedPreconditionError(`snapshot ${key} is ${r.kind === 'view' ? 'a view' : 'committed'}: only active snapshots can be committed`);
    if (rebaseParent !== '' && rebaseParent !== r.parent) {
      throw new FailedPreconditionError(
        `commit of ${key} onto parent ${rebaseParent}: rebase is not supported (the snapshot's parent is ${JSON.stringify(r.parent)})`,
      );
    }
    return r;
  }

  /** The committed record of `r` (a local layer: its own link, if it owns one, is its stack). */
  committed(r: SnapshotRecord, name: string, labels: Record<string, string>, usage: Usage, own: string): SnapshotRecord {
    const now = this.clock.now();
    return {
      ...r,
      name,
      kind: 'committed',
      created: now,
      updated: now,
      labels: cleanLabels(labels),
      size: usage.size,
      inodes: usage.inodes,
      stack: r.links[own] ? [own] : [],
      terminal: false,
      source: 'local',
    };
  }

  /** The snapshot `key` that may be removed: it has no children. */
  toRemove(key: string): SnapshotRecord {
    const r = this.must(key);
    const kids = this.store.children(key);
    if (kids.size > 0) {
      throw new FailedPreconditionError(
        `cannot remove snapshot ${key}: it has ${kids.size} child snapshot(s) (${[...kids].slice(0, 3).join(', ')})`,
        'CVMFS_THIN_HAS_CHILDREN',
      );
    }
    return r;
  }

  /** Update's new labels of `name`, written (the caller holds its lock). */
  async update(name: string, labels: Record<string, string>, paths: readonly string[]): Promise<Info> {
    const r = this.must(name);
    const next = updatedLabels(r.labels, labels, paths, `snapshot ${name}`);
    const rec: SnapshotRecord = { ...r, labels: next, updated: this.clock.now() };
    await this.store.write({ put: [rec] });
    return this.info(rec);
  }

  list(filter: (i: Info) => boolean): Info[] {
    const out: Info[] = [];
    for (const r of this.store.all()) {
      const i = this.info(r);
      if (filter(i)) out.push(i);
    }
    // the order containerd's bolt store walks in
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }
}
