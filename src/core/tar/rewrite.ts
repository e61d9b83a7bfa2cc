/**
 * LayerRewriter: an OCI layer tar in, the same layer as a tar a CVMFS
 * publisher can ingest out, without unpacking it anywhere (`cvmfs_server
 * ingest` reads a tar on stdin; DUCC's way to publish layers).
 *
 * Every entry is checked as the extractor checks it (names, lengths,
 * escapes, link names) and re-emitted under `prefix` (e.g. `layerfs/`),
 * with its owner (numeric), mode, times and data. What an ingest would drop
 * or misread is taken out into the layer's record, as the extractor's
 * `record` mode does: OCI whiteouts and opaque markers (written as plain
 * `.wh.*` files they would come back in containers), AUFS metadata (skipped),
 * and xattrs (an ingest drops every one; `trusted.*` never kept).
 *
 * What cannot be done without a local tree is refused naming the entry: a
 * parent that is a symlink or a non-directory of the same layer (the
 * extractor resolves it inside the layer; an ingest would not), a hardlink
 * to something the layer has not written (or to a directory).
 *
 * The input's sha256 (the diff_id) is computed on the way; at the end,
 * `trailer(result)` gives entries to append (the record, catalog markers)
 * before the end-of-archive marker: a consumer that sees no end-of-archive
 * got a broken layer. Output keeps the input's back-pressure.
 */
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { classifyWhiteout, AUFS_META_PREFIX, WHITEOUT_PREFIX } from '../fs/whiteout.js';
import { unsafe } from './errors.js';
import { encodeHeader, padding, type TarHeader } from './headers.js';
import { type MemEntry, packEntriesToBuffer } from './pack.js';
import { TarParser, type TarParserHandler } from './parser.js';
import { cleanName, entryComponents, recordPath } from './paths.js';
import type { LayerRecordData } from './writer-meta.js';

export interface RewriteResult {
  /** sha256:<hex> of the whole input */
  diffId: string;
  bytes: number;
  entries: number;
  whiteouts: number;
  opaques: number;
  hardlinks: number;
  /** paths are UTF-8, relative to the layer root (without the prefix) */
  record: LayerRecordData;
  /** directory (byte string, '' = root) → entries directly in it, for nested catalogs */
  direct: Map<string, number>;
  /** directories (byte strings) where the image itself has a `.cvmfscatalog` file */
  catalogs: Set<string>;
}

export interface RewriteOptions {
  /** prefix of every emitted name, ending in '/' */
  prefix: string;
  /** emit OCI whiteouts and opaque markers as the plain files they are (DUCC's form) instead of recording them */
  keepWhiteouts?: boolean;
  /**
   * emit `./` first (a root-owned 0755 directory): the directory the tar is
   * ingested into gets a real owner (`cvmfs_server ingest -k` gives a
   * directory it creates implicitly no valid one, and root cannot write
   * into it in a later transaction)
   */
  baseEntry?: boolean;
  maxNameBytes?: number;
  maxEntries?: number;
  maxTotalBytes?: number;
  maxPaxHeaderBytes?: number;
  /** entries to append before the end-of-archive marker (called once the input is complete) */
  trailer: (r: RewriteResult) => MemEntry[] | Promise<MemEntry[]>;
}

type Kind = 'dir' | 'symlink' | 'other';

/** The nested-catalog marker a CVMFS publisher honours. */
const CATALOG = '.cvmfscatalog';

export class LayerRewriter extends Transform implements TarParserHandler {
  private readonly parser: TarParser;
  private readonly hash = createHash('sha256');
  private bytes = 0;
  private readonly kinds = new Map<string, Kind>([['', 'dir']]);
  private readonly xattrs = new Map<string, Map<string, Buffer>>();
  private readonly deleted = new Set<string>();
  private readonly opaque = new Set<string>();
  private readonly direct = new Map<string, number>([['', 0]]);
  private readonly stats = { entries: 0, whiteouts: 0, opaques: 0, hardlinks: 0 };
  private dataOpen = false;
  private pad = 0;
  private rootEmitted = false;
  /** a `./` entry that came after other entries: emitted again at the end (its attributes must win) */
  private lateRoot: TarHeader | null = null;

  constructor(private readonly o: RewriteOptions) {
    super({ highWaterMark: 1 << 20 });
    this.parser = new TarParser(this, o.maxPaxHeaderBytes !== undefined ? { maxPaxHeaderBytes: o.maxPaxHeaderBytes } : {});
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    if (this.bytes > (this.o.maxTotalBytes ?? Infinity)) return cb(unsafe('', 'too-large', `more than ${this.o.maxTotalBytes} bytes`));
    try {
      // anything after the end-of-archive marker is hashed (it is part of the diff_id) but not parsed
      if (!this.parser.ended) this.parser.push(chunk);
      cb();
    } catch (e) {
      cb(e as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.parser.end();
    } catch (e) {
      cb(e as Error);
      return;
    }
    this.emitRoot(null);
    if (this.lateRoot) this.emit_(this.lateRoot);
    const catalogs = new Set<string>();
    for (const [p, k] of this.kinds)
      if (k === 'other' && (p === CATALOG || p.endsWith(`/${CATALOG}`))) catalogs.add(p.slice(0, Math.max(0, p.length - CATALOG.length - 1)));
    const res: RewriteResult = {
      diffId: `sha256:${this.hash.digest('hex')}`,
      bytes: this.bytes,
      ...this.stats,
      record: this.record(),
      direct: this.direct,
      catalogs,
    };
    Promise.resolve()
      .then(() => this.o.trailer(res))
      .then(
        (extra) => {
          this.push(packEntriesToBuffer(extra));
          cb();
        },
        (e: unknown) => cb(e as Error),
      );
  }

  private record(): LayerRecordData {
    const xattrs: LayerRecordData['xattrs'] = [];
    for (const p of [...this.xattrs.keys()].sort()) {
      const m = this.xattrs.get(p)!;
      for (const n of [...m.keys()].sort()) xattrs.push({ path: recordPath(p, p), name: n, value: m.get(n)!.toString('base64') });
    }
    return { deleted: [...this.deleted].sort(), opaque: [...this.opaque].sort(), xattrs };
  }

  // ------------------------------------------------------------ parser handler

  entry(h: TarHeader): void {
    const s = this.stats;
    s.entries++;
    if (s.entries > (this.o.maxEntries ?? Infinity)) throw unsafe(h.name, 'too-many-entries', `more than ${this.o.maxEntries} entries`);
    const comps = entryComponents(h, this.o.maxNameBytes ?? 4096);
    if (comps.length === 0) {
      if (h.type !== 'dir') throw unsafe(h.name, 'replace-root', `a ${h.type} entry cannot replace the destination directory itself`);
      if (this.rootEmitted) this.lateRoot = { ...h, name: this.o.prefix };
      this.emitRoot(h);
      return;
    }
    this.emitRoot(null);
    for (let i = 0; i < comps.length - 1; i++) {
      if (comps[i]!.startsWith(WHITEOUT_PREFIX)) {
        if (comps[i]!.startsWith(AUFS_META_PREFIX)) return;
        throw unsafe(h.name, 'bad-whiteout', `whiteout ${JSON.stringify(comps[i])} used as a directory`);
      }
    }
    const parent = this.parentOf(comps, h.name);
    const base = comps[comps.length - 1]!;
    const rel = parent === '' ? base : `${parent}/${base}`;
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const w = classifyWhiteout(base);
      if (w === null) throw unsafe(h.name, 'bad-whiteout', `invalid whiteout name ${JSON.stringify(base)}`);
      if (this.o.keepWhiteouts && w.kind !== 'aufs-meta') {
        if (w.kind === 'opaque') s.opaques++;
        else s.whiteouts++;
        this.direct.set(parent, (this.direct.get(parent) ?? 0) + 1);
        this.emit_({ ...h, name: this.o.prefix + rel, type: 'file', size: 0, linkname: '' });
        return;
      }
      if (w.kind === 'opaque') {
        s.opaques++;
        this.opaque.add(recordPath(parent, h.name));
      } else if (w.kind === 'whiteout') {
        s.whiteouts++;
        const target = parent === '' ? w.target : `${parent}/${w.target}`;
        this.deleted.add(recordPath(target, h.name));
        this.forget(target);
      }
      return; // AUFS metadata: skipped, as the extractor does
    }
    let linkname = h.linkname;
    if (h.type === 'link') {
      const tc = cleanName(h.linkname);
      if (tc === null) throw unsafe(h.name, 'hardlink-escape', `hardlink target ${JSON.stringify(h.linkname)} escapes the destination`);
      const t = tc.join('/');
      const k = this.kinds.get(t);
      if (t === '' || k === undefined || k === 'dir')
        throw unsafe(
          h.name,
          k === 'dir' || t === '' ? 'hardlink-to-directory' : 'hardlink-target-missing',
          `hardlink target ${JSON.stringify(h.linkname)} ${k === 'dir' || t === '' ? 'is a directory' : 'was not written before it in this layer'}`,
        );
      s.hardlinks++;
      linkname = this.o.prefix + t;
      // the link shares its target's inode: its xattrs are the target's, or the entry's own
      const tx = this.xattrs.get(t);
      if (!h.xattrs && tx) this.xattrs.set(rel, new Map(tx));
    }
    if (this.kinds.get(rel) === 'dir' && h.type !== 'dir') this.forget(rel);
    this.kinds.set(rel, h.type === 'dir' ? 'dir' : h.type === 'symlink' ? 'symlink' : 'other');
    this.setXattrs(rel, h);
    this.direct.set(parent, (this.direct.get(parent) ?? 0) + 1);
    if (h.type === 'dir' && !this.direct.has(rel)) this.direct.set(rel, 0);
    this.emit_({ ...h, name: this.o.prefix + rel, linkname });
  }

  data(buf: Buffer, start: number, end: number): void {
    if (this.dataOpen) this.push(Buffer.from(buf.subarray(start, end)));
  }

  entryEnd(): void {
    if (this.dataOpen && this.pad > 0) this.push(Buffer.alloc(this.pad));
    this.dataOpen = false;
    this.pad = 0;
  }

  // ------------------------------------------------------------ helpers

  /** The parent's path, checked: no symlink or non-directory of this layer on the way; missing ones are implicit directories. */
  private parentOf(comps: string[], name: string): string {
    let p = '';
    for (let i = 0; i < comps.length - 1; i++) {
      p = p === '' ? comps[i]! : `${p}/${comps[i]}`;
      const k = this.kinds.get(p);
      if (k === 'symlink')
        throw unsafe(
          name,
          'symlink-parent',
          `parent ${JSON.stringify(p)} is a symlink written by this layer: a streamed publish (ingest) cannot resolve it; publish this image through a transaction`,
        );
      if (k === 'other') throw unsafe(name, 'parent-not-directory', `parent ${JSON.stringify(p)} is not a directory`);
      if (k === undefined) {
        this.kinds.set(p, 'dir');
        const pp = i === 0 ? '' : comps.slice(0, i).join('/');
        this.direct.set(pp, (this.direct.get(pp) ?? 0) + 1);
        this.direct.set(p, 0);
      }
    }
    return p;
  }

  /** A path (and what is below it) removed from this layer's view: a whiteout or a replacement. */
  private forget(rel: string): void {
    const below = `${rel}/`;
    for (const m of [this.kinds, this.xattrs] as Map<string, unknown>[]) {
      for (const k of m.keys()) if (k === rel || k.startsWith(below)) m.delete(k);
    }
  }

  private setXattrs(rel: string, h: TarHeader): void {
    if (!h.xattrs) {
      if (h.type !== 'link') this.xattrs.delete(rel);
      return;
    }
    const m = new Map<string, Buffer>();
    for (const [n, v] of h.xattrs) if (!n.startsWith('trusted.')) m.set(n, Buffer.from(v));
    if (m.size) this.xattrs.set(rel, m);
    else this.xattrs.delete(rel);
  }

  private emitRoot(h: TarHeader | null): void {
    if (this.rootEmitted) return;
    this.rootEmitted = true;
    if (this.o.baseEntry) {
      this.push(encodeHeader(plainDir('./')));
    }
    const root: TarHeader = h ? { ...h, name: this.o.prefix } : plainDir(this.o.prefix);
    if (h) this.setXattrs('', h);
    this.emit_(root);
  }

  /** Emit a header (numeric owners, no trusted.* xattrs: an ingest drops the rest itself) and open its data. */
  private emit_(h: TarHeader): void {
    const xs = h.xattrs ? new Map([...h.xattrs].filter(([n]) => !n.startsWith('trusted.'))) : null;
    this.push(encodeHeader({ ...h, uname: '', gname: '', xattrs: xs && xs.size ? xs : null }));
    this.dataOpen = h.type === 'file' && h.size > 0;
    this.pad = this.dataOpen ? padding(h.size) : 0;
  }
}

/** A directory entry of our own (root-owned, 0755, now): the base `./` and a layer root the source lacks. */
function plainDir(name: string): TarHeader {
  const mtime = { sec: Math.floor(Date.now() / 1000), nsec: 0 };
  return { name, linkname: '', type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime, devmajor: 0, devminor: 0, uname: '', gname: '', xattrs: null };
}
