/**
 * A synchronous, push-based streaming tar parser: ustar, GNU (`././@LongLink`
 * L/K entries, base-256 numbers) and PAX ('x' records incl. binary-exact
 * SCHILY.xattr.*, LIBARCHIVE.xattr.*; 'g' global headers are ignored like
 * Docker does). Feed it chunks with `push()`, then `end()`.
 *
 * Why our own parser: tar-stream decodes PAX values as UTF-8 (binary xattrs
 * such as security.capability get corrupted) and needs an async stream per
 * entry; this one hands out zero-copy slices of the input chunks and is
 * driven by plain function calls, which is what a sync extractor in a worker
 * wants (see bench/extract.ts for the measured difference).
 *
 * Semantics follow Go's archive/tar (what Docker, containerd and BuildKit
 * use): header-only types (links, devices, dirs, fifos) carry no data whatever
 * their size field says; a regular file whose name ends in '/' is a directory;
 * EOF exactly at a header boundary ends the archive even without the two
 * zero blocks. Anything after the end-of-archive marker is ignored.
 */
import { unsafe } from './errors.js';
import { BLOCK, checksumOk, field, isZeroBlock, latin1, numeric, padding, parsePax, parsePaxTime, T, type EntryType, type TarHeader } from './headers.js';

export interface TarParserHandler {
  /** A new entry. Its data (header.size bytes) follows through data(). */
  entry(h: TarHeader): void;
  /** A piece of the current entry's data: buf[start, end). Valid only during the call. */
  data(buf: Buffer, start: number, end: number): void;
  /** The current entry's data is complete. */
  entryEnd(): void;
}

interface ParserLimits {
  /** maximum size of one PAX ('x'/'g') or GNU long name/link ('L'/'K') entry; default 1 MiB */
  maxPaxHeaderBytes?: number;
}

const enum S {
  HEADER,
  DATA,
  PAD,
  META,
  END,
}

const enum Meta {
  PAX,
  PAXG,
  LONGNAME,
  LONGLINK,
}

export class TarParser {
  private state = S.HEADER;
  private readonly hdr = Buffer.alloc(BLOCK);
  private hdrLen = 0;
  /** data bytes left in the current entry or meta entry */
  private remaining = 0;
  private pad = 0;
  private meta: Buffer | null = null;
  private metaLen = 0;
  private metaKind = Meta.PAX;
  private pax: Map<string, string> | null = null;
  private paxXattrs: Map<string, Buffer> | null = null;
  private longName: string | null = null;
  private longLink: string | null = null;
  private zeroBlocks = 0;
  private readonly maxPax: number;
  /** total bytes consumed */
  offset = 0;
  /** Stream offset just past the header block being handled: valid during `entry()` (tar-split records the raw bytes up to it). */
  headerEnd = 0;
  /** name of the current/last entry (byte string), for error messages */
  current = '';

  constructor(
    private readonly handler: TarParserHandler,
    limits: ParserLimits = {},
  ) {
    this.maxPax = limits.maxPaxHeaderBytes ?? 1024 * 1024;
  }

  get ended(): boolean {
    return this.state === S.END;
  }

  push(chunk: Buffer): void {
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      switch (this.state) {
        case S.HEADER: {
          if (this.hdrLen === 0 && n - pos >= BLOCK) {
            this.headerEnd = this.offset + BLOCK;
            this.header(chunk, pos);
            pos += BLOCK;
            this.offset += BLOCK;
          } else {
            const take = Math.min(BLOCK - this.hdrLen, n - pos);
            chunk.copy(this.hdr, this.hdrLen, pos, pos + take);
            this.hdrLen += take;
            pos += take;
            this.offset += take;
            if (this.hdrLen === BLOCK) {
              this.hdrLen = 0;
              this.headerEnd = this.offset;
              this.header(this.hdr, 0);
            }
          }
          break;
        }
        case S.DATA: {
          const take = Math.min(this.remaining, n - pos);
          this.handler.data(chunk, pos, pos + take);
          pos += take;
          this.offset += take;
          this.remaining -= take;
          if (this.remaining === 0) this.finishEntry();
          break;
        }
        case S.PAD: {
          const take = Math.min(this.pad, n - pos);
          pos += take;
          this.offset += take;
          this.pad -= take;
          if (this.pad === 0) this.state = S.HEADER;
          break;
        }
        case S.META: {
          const take = Math.min(this.remaining, n - pos);
          chunk.copy(this.meta!, this.metaLen, pos, pos + take);
          this.metaLen += take;
          pos += take;
          this.offset += take;
          this.remaining -= take;
          if (this.remaining === 0) this.finishMeta();
          break;
        }
        case S.END:
          this.offset += n - pos;
          return;
      }
    }
  }

  /** The input is complete. Throws if it stopped inside an entry. */
  end(): void {
    if (this.state === S.END) return;
    if (this.state === S.HEADER && this.hdrLen === 0 && this.meta === null && this.pax === null && this.longName === null && this.longLink === null) {
      // EOF at a header boundary (with or without one zero block): end of archive, like Go's reader
      this.state = S.END;
      return;
    }
    const where =
      this.state === S.HEADER
        ? this.hdrLen > 0
          ? 'inside a header'
          : 'after an extended header, before its entry'
        : this.state === S.PAD
          ? 'inside padding'
          : 'inside entry data';
    throw unsafe(this.current, 'truncated', `truncated archive: unexpected end of input ${where} at offset ${this.offset}`);
  }

  private header(b: Buffer, off: number): void {
    if (isZeroBlock(b, off)) {
      this.zeroBlocks++;
      if (this.zeroBlocks >= 2) {
        if (this.pax || this.longName !== null || this.longLink !== null) {
          throw unsafe(this.current, 'truncated', 'end of archive right after an extended header');
        }
        this.state = S.END;
      }
      return;
    }
    if (this.zeroBlocks > 0) {
      // a lone zero block followed by more headers: GNU tar's --ignore-zeros territory; Go errors
      throw unsafe(this.current, 'bad-header', `zero block followed by a header at offset ${this.offset}`);
    }
    if (!checksumOk(b, off)) {
      throw unsafe(field(b, off, 100), 'bad-checksum', `bad header checksum at offset ${this.offset}`);
    }
    const flag = b[off + 156]!;
    const magic = field(b, off + 257, 6);
    const version = field(b, off + 263, 2);
    const isUstar = magic === 'ustar' && version === '00';
    const isGnu = magic === 'ustar ' || (magic === 'ustar' && b[off + 262] === 0x20);
    let name = field(b, off, 100);
    if (isUstar && !isGnu) {
      const prefix = field(b, off + 345, 155);
      if (prefix.length > 0) name = prefix + '/' + name;
    }
    this.current = this.longName ?? name;
    const size = numeric(b, off + 124, 12);
    if (!Number.isSafeInteger(size) || size < 0) throw unsafe(this.current, 'bad-header', `invalid size field at offset ${this.offset}`);

    switch (flag) {
      case T.PAX:
      case T.PAXG:
      case T.GNU_LONGNAME:
      case T.GNU_LONGLINK: {
        if (size > this.maxPax) {
          throw unsafe(this.current, 'pax-too-large', `extended header of ${size} bytes exceeds the limit of ${this.maxPax}`);
        }
        this.metaKind = flag === T.PAX ? Meta.PAX : flag === T.PAXG ? Meta.PAXG : flag === T.GNU_LONGNAME ? Meta.LONGNAME : Meta.LONGLINK;
        this.meta = Buffer.allocUnsafe(size);
        this.metaLen = 0;
        this.remaining = size;
        this.pad = padding(size);
        if (size === 0) this.finishMeta();
        else this.state = S.META;
        return;
      }
      case T.GNU_SPARSE:
        throw unsafe(this.current, 'sparse', 'GNU sparse files are not supported');
    }

    let type: EntryType;
    switch (flag) {
      case T.REG:
      case T.AREG:
      case T.CONT:
        type = 'file';
        break;
      case T.LINK:
        type = 'link';
        break;
      case T.SYM:
        type = 'symlink';
        break;
      case T.CHR:
        type = 'char';
        break;
      case T.BLK:
        type = 'block';
        break;
      case T.DIR:
        type = 'dir';
        break;
      case T.FIFO:
        type = 'fifo';
        break;
      default:
        throw unsafe(this.current, 'unsupported-type', `unsupported entry type ${JSON.stringify(String.fromCharCode(flag))}`);
    }

    const h: TarHeader = {
      name,
      linkname: field(b, off + 157, 100),
      type,
      mode: numeric(b, off + 100, 8),
      uid: numeric(b, off + 108, 8),
      gid: numeric(b, off + 116, 8),
      size,
      mtime: { sec: numeric(b, off + 136, 12), nsec: 0 },
      devmajor: isUstar || isGnu ? numeric(b, off + 329, 8) : 0,
      devminor: isUstar || isGnu ? numeric(b, off + 337, 8) : 0,
      uname: isUstar || isGnu ? field(b, off + 265, 32) : '',
      gname: isUstar || isGnu ? field(b, off + 297, 32) : '',
      xattrs: null,
    };
    if (
      Number.isNaN(h.mode) ||
      Number.isNaN(h.uid) ||
      Number.isNaN(h.gid) ||
      Number.isNaN(h.mtime.sec) ||
      Number.isNaN(h.devmajor) ||
      Number.isNaN(h.devminor)
    ) {
      throw unsafe(this.current, 'bad-header', `invalid numeric field in header at offset ${this.offset}`);
    }
    h.mode &= 0o7777;
    // GNU headers may carry an atime (as Go reads it; a PAX atime overrides it)
    if (isGnu && b[off + 345] !== 0) {
      const at = numeric(b, off + 345, 12);
      if (!Number.isNaN(at)) h.atime = { sec: at, nsec: 0 };
    }
    if (this.longName !== null) h.name = this.longName;
    if (this.longLink !== null) h.linkname = this.longLink;
    if (this.pax) this.applyPax(h, this.pax);
    if (this.paxXattrs) h.xattrs = this.paxXattrs;
    this.pax = null;
    this.paxXattrs = null;
    this.longName = null;
    this.longLink = null;
    this.current = h.name;

    // only the old type '\0' means a directory by a trailing slash (Go's archive/tar)
    if (flag === T.AREG && h.name.endsWith('/')) h.type = 'dir';
    // header-only types carry no data (Go's archive/tar)
    const dataSize = h.type === 'file' ? h.size : 0;
    if (h.type !== 'file') h.size = 0;
    this.handler.entry(h);
    this.remaining = dataSize;
    this.pad = padding(dataSize);
    if (dataSize === 0) this.finishEntry();
    else this.state = S.DATA;
  }

  private applyPax(h: TarHeader, pax: Map<string, string>): void {
    for (const [k, v] of pax) {
      switch (k) {
        case 'path':
          if (v.length > 0) h.name = v;
          break;
        case 'linkpath':
          if (v.length > 0) h.linkname = v;
          break;
        case 'size':
        case 'uid':
        case 'gid':
        case 'SCHILY.devmajor':
        case 'SCHILY.devminor': {
          if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw unsafe(h.name, 'bad-pax', `invalid PAX ${k}=${JSON.stringify(v)}`);
          const n = Number(v);
          if (k === 'size') h.size = n;
          else if (k === 'uid') h.uid = n;
          else if (k === 'gid') h.gid = n;
          else if (k === 'SCHILY.devmajor') h.devmajor = n;
          else h.devminor = n;
          break;
        }
        case 'mtime':
        case 'atime': {
          const t = parsePaxTime(v);
          if (!t) throw unsafe(h.name, 'bad-pax', `invalid PAX ${k}=${JSON.stringify(v)}`);
          if (k === 'mtime') h.mtime = t;
          else h.atime = t;
          break;
        }
        case 'uname':
          h.uname = v;
          break;
        case 'gname':
          h.gname = v;
          break;
        default:
          // ctime, comment, charset, hdrcharset, SCHILY.* others, vendor keys: ignored
          break;
      }
    }
    if (pax.has('path') && h.name.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in PAX path');
    if (pax.has('linkpath') && h.linkname.includes('\0')) throw unsafe(h.name, 'nul-in-name', 'NUL byte in PAX linkpath');
  }

  private finishMeta(): void {
    const data = this.meta!;
    this.meta = null;
    this.state = this.pad > 0 ? S.PAD : S.HEADER;
    switch (this.metaKind) {
      case Meta.PAX: {
        const r = parsePax(data, this.current);
        // several 'x' headers before one entry: later records win
        if (this.pax) for (const [k, v] of r.fields) this.pax.set(k, v);
        else this.pax = r.fields;
        if (r.xattrs) {
          if (this.paxXattrs) for (const [k, v] of r.xattrs) this.paxXattrs.set(k, v);
          else this.paxXattrs = r.xattrs;
        }
        break;
      }
      case Meta.PAXG:
        // validated (sparse keys refused, malformed refused) but otherwise ignored, like Docker
        parsePax(data, this.current);
        break;
      case Meta.LONGNAME:
      case Meta.LONGLINK: {
        let end = data.length;
        while (end > 0 && data[end - 1] === 0) end--;
        const s = latin1(data, 0, end);
        if (s.includes('\0')) throw unsafe(s, 'nul-in-name', `NUL byte inside a GNU long ${this.metaKind === Meta.LONGNAME ? 'name' : 'link name'}`);
        if (this.metaKind === Meta.LONGNAME) {
          this.longName = s;
          this.current = s;
        } else {
          this.longLink = s;
        }
        break;
      }
    }
  }

  private finishEntry(): void {
    this.handler.entryEnd();
    this.state = this.pad > 0 ? S.PAD : S.HEADER;
  }
}
