/**
 * The graph driver's layer records: one directory per layer under
 * `<Home>/layers/<id>/` holding `layer.json` (the record: parent, rw, thin
 * stack; written durably), `refs` (Get/Put count, survives plugin restarts),
 * `diff/` (the layer's files = overlay upper dir), `work/` and `merged/`; and
 * their short links in `<Home>/l/` (core/stack). Loading restores the maps,
 * the links and removes what interrupted operations left.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { NotFoundError } from '../core/errors/errors.js';
import { fsyncDir, removeTree, writeFileAtomic } from '../core/fs/fsutil.js';
import type { Host } from '../core/host/host.js';
import type { ChainNode, LayerStack } from '../core/stack/index.js';

export interface ThinLower {
  /** Short link name in l/ (and idmapped mount point name in m/). */
  link: string;
  /** Host directory: a CVMFS layer directory, a DUCC chain, or a local mask. */
  dir: string;
}

export interface ThinRecord {
  /** File name of the manifest in the layer (thin.json). */
  manifest: string;
  origin?: string | undefined;
  /** Number of CVMFS layers the manifest lists. */
  layers: number;
  how: string[];
  /** Lower directories for the layers above, top first. */
  lowers: ThinLower[];
}

export interface LayerRecord {
  schema: 'cvmfs-thin/graphdriver-layer';
  version: 1;
  id: string;
  parent: string;
  /** CreateReadWrite (container and -init layers) rather than Create (image layers). */
  rw: boolean;
  created: string;
  /** Short link name of the layer's diff dir in l/. */
  link: string;
  thin?: ThinRecord | undefined;
}

export interface Layer {
  rec: LayerRecord;
  refs: number;
}

const LAYER_SCHEMA = 'cvmfs-thin/graphdriver-layer';

function validRecord(o: unknown, id: string): o is LayerRecord {
  const r = o as Partial<LayerRecord> | null;
  return !!r && r.schema === LAYER_SCHEMA && r.id === id && typeof r.parent === 'string' && typeof r.link === 'string' && typeof r.rw === 'boolean';
}

/** Write without fsync: survives a process restart (the only thing reference counts must survive). */
async function writeFileQuick(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, data);
  await fsp.rename(tmp, file);
}

export class LayerStore {
  private readonly layers = new Map<string, Layer>();
  private readonly childrenOf = new Map<string, Set<string>>();
  private readonly layersDir: string;

  private constructor(
    readonly home: string,
    private readonly stack: LayerStack,
    private readonly host: Host,
    private readonly log: Logger,
  ) {
    this.layersDir = path.join(home, 'layers');
  }

  /**
   * Load the records under `home`. `fresh`: dockerd (re)started (Init), so a
   * layer still mounted counts as one reference, like moby's RefCounter;
   * otherwise (plugin restart) the saved counts stand.
   */
  static async load(home: string, stack: LayerStack, host: Host, log: Logger, fresh: boolean): Promise<LayerStore> {
    const s = new LayerStore(home, stack, host, log);
    await fsp.mkdir(s.layersDir, { recursive: true, mode: 0o711 });
    await fsp.mkdir(path.join(home, 'm'), { recursive: true, mode: 0o700 });
    const mounts = new Set(host.mountinfo().map((m) => m.mountPoint));
    for (const name of await fsp.readdir(s.layersDir)) {
      const dir = path.join(s.layersDir, name);
      if (name.startsWith('.')) {
        // an interrupted Create or Remove
        await removeTree(dir, host.mountinfo()).catch((e: unknown) => log.warn({ err: e, dir }, 'cannot remove the leftover of an interrupted operation'));
        continue;
      }
      let rec: unknown;
      try {
        rec = JSON.parse(await fsp.readFile(path.join(dir, 'layer.json'), 'utf8'));
      } catch (e) {
        log.error({ err: e, dir }, 'layer directory without a readable record; left untouched');
        continue;
      }
      if (!validRecord(rec, name)) {
        log.error({ dir }, 'layer record is not valid; left untouched');
        continue;
      }
      let refs = 0;
      try {
        refs = Math.max(0, Number.parseInt(await fsp.readFile(path.join(dir, 'refs'), 'utf8'), 10) || 0);
      } catch {
        /* never mounted */
      }
      if (fresh) refs = mounts.has(path.join(dir, 'merged')) ? 1 : 0;
      s.layers.set(name, { rec, refs });
    }
    for (const [id, l] of s.layers) {
      if (l.rec.parent === '') continue;
      if (!s.layers.has(l.rec.parent)) log.error({ id, parent: l.rec.parent }, 'layer whose parent is missing');
      s.addChild(l.rec.parent, id);
    }
    await s.recoverLinks(mounts);
    return s;
  }

  /** Every recorded link present, the link counter above every name in use, orphans removed. */
  private async recoverLinks(mounts: ReadonlySet<string>): Promise<void> {
    const owned = new Map<string, string>();
    for (const { rec } of this.layers.values()) {
      owned.set(rec.link, `../layers/${rec.id}/diff`);
      for (const t of rec.thin?.lowers ?? []) owned.set(t.link, t.dir);
    }
    const mDir = path.join(this.home, 'm');
    const fixed = await this.stack.links.recover(owned, await fsp.readdir(mDir));
    if (fixed) this.log.warn({ fixed }, 'recreated missing short links');
    // links and idmap mount points no record owns: left by a Create, ApplyDiff or Remove that was interrupted
    let orphans = await this.stack.links.collectOrphans(new Set(owned.keys()));
    for (const n of await fsp.readdir(mDir)) {
      const p = path.join(mDir, n);
      if (owned.has(n) || mounts.has(p)) continue;
      await fsp.rmdir(p).then(
        () => orphans++,
        () => undefined,
      );
    }
    if (orphans) this.log.warn({ orphans }, 'removed links left by interrupted operations');
  }

  private addChild(parent: string, id: string): void {
    let s = this.childrenOf.get(parent);
    if (!s) this.childrenOf.set(parent, (s = new Set()));
    s.add(id);
  }

  get size(): number {
    return this.layers.size;
  }
  all(): IterableIterator<[string, Layer]> {
    return this.layers.entries();
  }
  get(id: string): Layer | undefined {
    return this.layers.get(id);
  }
  must(id: string): Layer {
    const l = this.layers.get(id);
    if (!l) throw new NotFoundError(`layer ${id} does not exist`, 'CVMFS_THIN_NO_SUCH_LAYER');
    return l;
  }
  children(id: string): ReadonlySet<string> {
    return this.childrenOf.get(id) ?? new Set();
  }

  layerDir(id: string): string {
    return path.join(this.layersDir, id);
  }
  diffDir(id: string): string {
    return path.join(this.layersDir, id, 'diff');
  }
  mergedDir(id: string): string {
    return path.join(this.layersDir, id, 'merged');
  }

  /** The chain-walk view of a layer: a thin layer contributes its CVMFS lowers and ends the walk. */
  readonly node = (id: string): ChainNode | undefined => {
    const l = this.layers.get(id);
    if (!l) return undefined;
    const thin = l.rec.thin;
    if (thin) return { parent: l.rec.parent, lowers: thin.lowers.map((t) => ({ link: t.link, real: t.dir })), external: true, terminal: true };
    return { parent: l.rec.parent, lowers: [{ link: l.rec.link, real: this.diffDir(id) }], external: false, terminal: false };
  };

  /** Create a layer's directories, link and record, atomically (a temp directory renamed into place). */
  async create(id: string, parent: string, rw: boolean, owner: { uid: number; gid: number } | undefined): Promise<void> {
    const tmp = path.join(this.layersDir, `.creating-${id}-${randomBytes(4).toString('hex')}`);
    const link = this.stack.links.allocate();
    try {
      await fsp.mkdir(tmp, { mode: 0o711 });
      const diff = path.join(tmp, 'diff');
      await fsp.mkdir(diff, { mode: 0o755 });
      if (owner) this.host.lchown(diff, owner.uid, owner.gid);
      await fsp.mkdir(path.join(tmp, 'work'), { mode: 0o700 });
      await fsp.mkdir(path.join(tmp, 'merged'), { mode: 0o700 });
      this.stack.links.create(link, `../layers/${id}/diff`);
      const rec: LayerRecord = { schema: LAYER_SCHEMA, version: 1, id, parent, rw, created: new Date().toISOString(), link };
      await writeFileAtomic(path.join(tmp, 'layer.json'), `${JSON.stringify(rec, null, 1)}\n`);
      await fsp.rename(tmp, this.layerDir(id));
      await fsyncDir(this.layersDir);
      this.layers.set(id, { rec, refs: 0 });
      if (parent !== '') this.addChild(parent, id);
    } catch (e) {
      this.stack.links.remove([link]);
      await removeTree(tmp).catch(() => undefined);
      throw e;
    }
  }

  /** Replace a layer's record durably. */
  async saveRecord(l: Layer, rec: LayerRecord): Promise<void> {
    await writeFileAtomic(path.join(this.layerDir(rec.id), 'layer.json'), `${JSON.stringify(rec, null, 1)}\n`);
    l.rec = rec;
  }

  async saveRefs(l: Layer): Promise<void> {
    await writeFileQuick(path.join(this.layerDir(l.rec.id), 'refs'), `${l.refs}\n`);
  }

  /** Forget a layer (the caller unmounted it): record first (renamed away), then links and data. */
  async remove(l: Layer): Promise<void> {
    const id = l.rec.id;
    const dir = this.layerDir(id);
    const trash = path.join(this.layersDir, `.removing-${id}-${randomBytes(4).toString('hex')}`);
    await fsp.rename(dir, trash);
    await fsyncDir(this.layersDir);
    this.layers.delete(id);
    this.childrenOf.delete(id);
    if (l.rec.parent !== '') this.childrenOf.get(l.rec.parent)?.delete(id);
    this.stack.links.remove([l.rec.link, ...(l.rec.thin?.lowers.map((t) => t.link) ?? [])]);
    try {
      await removeTree(trash, this.host.mountinfo());
    } catch (e) {
      this.log.error({ err: e, dir: trash }, 'cannot remove the data of a removed layer; it is removed at the next start');
    }
  }

  /** A directory without a record (for Remove's log). */
  orphanDir(id: string): boolean {
    return existsSync(this.layerDir(id));
  }

  /** The mask directory names thin layers use. */
  usedMasks(): Set<string> {
    const used = new Set<string>();
    for (const l of this.layers.values()) this.stack.masksUsedBy(l.rec.thin?.lowers.map((t) => t.dir) ?? [], used);
    return used;
  }
}
