/**
 * Deleting removed snapshots' data in the background, started a little later
 * so that it never delays answers to requests: batched (one mount table read
 * per batch), in slices of a few records between which pending requests are
 * served. Every removal goes through the thread pool: a synchronous rmdir is
 * cheaper, but here nobody waits for it and it would delay the next request
 * (the p99 of a Prepare→Commit→Remove cycle).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type MountInfo, removeTree } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import { type LayerStack, linkName, type ShortLinks } from '../core/stack/index.js';
import type { MetaStore, SnapshotRecord } from './metastore.js';

export class Removals {
  private queue: SnapshotRecord[] = [];
  private run: Promise<void> | null = null;

  constructor(
    private readonly host: Host,
    private readonly links: ShortLinks,
    /** The data directories of a snapshot id. */
    private readonly dirsOf: (id: number) => string[],
    private readonly log: Logger,
  ) {}

  /** Remove the directories and links of a snapshot whose creation failed (no record owns them). */
  async discard(id: number, links: Record<string, string>): Promise<void> {
    this.links.remove(Object.keys(links));
    for (const dir of this.dirsOf(id)) {
      await removeTree(dir, this.host.mountinfo()).catch((e: unknown) =>
        this.log.error({ err: e, dir }, 'could not remove directory of a failed snapshot; Cleanup will retry'),
      );
    }
  }

  /** Remove the data of a snapshot whose record is gone (a crash before this leaves an orphan for Cleanup). */
  push(r: SnapshotRecord): void {
    this.queue.push(r);
    if (this.run) return;
    this.run = new Promise<void>((resolve) => setTimeout(resolve, 20))
      .then(async () => {
        while (this.queue.length) {
          const batch = this.queue.splice(0, 64);
          // read only if a directory is not empty (removeTree: rmdir first)
          let table: MountInfo[] | undefined;
          const mounts = () => (table ??= this.host.mountinfo());
          for (let i = 0; i < batch.length; i += 8) {
            await Promise.all(batch.slice(i, i + 8).map((rec) => this.removeData(rec, mounts)));
            await new Promise<void>((resolve) => setImmediate(resolve));
          }
        }
      })
      .finally(() => {
        this.run = null;
      });
  }

  private async removeData(rec: SnapshotRecord, mounts: () => MountInfo[]): Promise<void> {
    try {
      this.links.remove(Object.keys(rec.links));
      if (rec.source === 'remote') return;
      for (const dir of this.dirsOf(rec.id)) await removeTree(dir, mounts, { sync: false });
    } catch (e) {
      this.log.error({ err: e, snapshot: rec.name }, 'could not remove snapshot data; Cleanup will retry');
    }
  }

  /** Cleanup: remove the entries of `parents` (data dirs named by id) no record owns. Returns how many. */
  async collectOrphans(parents: readonly string[], owned: ReadonlySet<string>, mounts: MountInfo[]): Promise<number> {
    let n = 0;
    for (const parent of parents) {
      for (const name of await fsp.readdir(parent)) {
        if (owned.has(name)) continue;
        try {
          await removeTree(path.join(parent, name), mounts);
          n++;
        } catch (e) {
          this.log.error({ err: e, dir: path.join(parent, name) }, 'cleanup: could not remove orphaned snapshot directory');
        }
      }
    }
    return n;
  }

  /** Wait until every queued removal is done. */
  async settled(): Promise<void> {
    while (this.run) await this.run;
  }

  /** Cleanup: data directories, short links and masks that no record owns (the caller holds the gate exclusively). */
  async collectUnreferenced(records: Iterable<SnapshotRecord>, stack: LayerStack, dataDirs: string[]): Promise<{ dirs: number; links: number; masks: number }> {
    const ids = new Set<string>();
    const links = new Set<string>();
    const masks = new Set<string>();
    for (const r of records) {
      ids.add(String(r.id));
      for (const ln of Object.keys(r.links)) links.add(ln);
      stack.masksUsedBy(Object.values(r.links), masks);
    }
    const mounts = stack.host.mountinfo();
    const nd = await this.collectOrphans(dataDirs, ids, mounts);
    const nl = await stack.links.collectOrphans(links);
    const nm = await stack.collectMasks(masks, mounts);
    if (nd || nl || nm) this.log.info({ dirs: nd, links: nl, masks: nm }, 'cleanup removed unreferenced data');
    return { dirs: nd, links: nl, masks: nm };
  }
}

/** After a restart: ids above any data directory on disk, every recorded short link present. */
export async function recoverData(store: MetaStore, links: ShortLinks, dataDirs: readonly string[], log: Logger): Promise<void> {
  for (const d of dataDirs) {
    for (const name of await fsp.readdir(d)) {
      const n = Number(name);
      if (Number.isSafeInteger(n)) store.bumpNextId(n);
    }
  }
  // links to CVMFS layers are checked now; a snapshot's link to its own directory when first used (ShortLinks.ensure)
  const owned = function* () {
    for (const r of store.all()) for (const [name, target] of Object.entries(r.links)) if (name !== linkName(r.id)) yield [name, target] as [string, string];
  };
  const fixed = await links.recover(owned());
  if (fixed) log.warn({ fixed }, 'recreated missing short links');
  log.info({ snapshots: store.size }, 'metadata loaded');
}
