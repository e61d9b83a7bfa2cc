/**
 * Tar header model, decoding of ustar/GNU/PAX header fields and encoding of
 * PAX-format headers. Pure (no I/O).
 *
 * Names, link names and xattr names are "byte strings": JS strings holding one
 * char per byte (latin1), so that any byte sequence survives a round trip
 * exactly (tar names are bytes, not text). `bstr()`/`fromBstr()` convert.
 */
import { unsafe } from './errors.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarTime {
  sec: number;
  /** 0..999_999_999 */
  nsec: number;
}

export interface TarHeader {
  /** byte string (latin1), as in the archive (not cleaned) */
  name: string;
  /** hardlink/symlink target, byte string */
  linkname: string;
  type: EntryType;
  /** permission bits incl. setuid/setgid/sticky (07777) */
  mode: number;
  uid: number;
  gid: number;
  /** data size (0 for every type but 'file') */
  size: number;
  mtime: TarTime;
  atime?: TarTime;
  devmajor: number;
  devminor: number;
  uname: string;
  gname: string;
  /** xattr name (byte string) → raw value; null when none */
  xattrs: Map<string, Buffer> | null;
}

/** UTF-8 text → byte string. */
export function bstr(text: string): string {
  return isAscii(text) ? text : Buffer.from(text, 'utf8').toString('latin1');
}

/** byte string → Buffer. */
function fromBstr(b: string): Buffer {
  return Buffer.from(b, 'latin1');
}

const ASCII = /^[\x00-\x7f]*$/;
export function isAscii(s: string): boolean {
  return ASCII.test(s);
}

export const BLOCK = 512;

// ---------------------------------------------------------------- decoding

/** Type flag characters. */
export const T = {
  REG: 0x30, // '0'
  AREG: 0, // '\0'
  LINK: 0x31,
  SYM: 0x32,
  CHR: 0x33,
  BLK: 0x34,
  DIR: 0x35,
  FIFO: 0x36,
  CONT: 0x37,
  PAX: 0x78, // 'x'
  PAXG: 0x67, // 'g'
  GNU_LONGNAME: 0x4c, // 'L'
  GNU_LONGLINK: 0x4b, // 'K'
  GNU_SPARSE: 0x53, // 'S'
} as const;

interface Latin1Slicer {
  latin1Slice(start: number, end: number): string;
}
/** buf[start, end) as a byte string (Buffer#latin1Slice: no argument checks). */
export function latin1(b: Buffer, start: number, end: number): string {
  return (b as unknown as Latin1Slicer).latin1Slice(start, end);
}

/** NUL-terminated field as a byte string. */
export function field(b: Buffer, off: number, len: number): string {
  let end = off;
  const max = off + len;
  while (end < max && b[end] !== 0) end++;
  return latin1(b, off, end);
}

/**
 * Numeric field: octal (space/NUL padded), or GNU base-256 (first byte has
 * the high bit set). Returns NaN when malformed.
 */
export function numeric(b: Uint8Array, off: number, len: number): number {
  const first = b[off]!;
  if (first & 0x80) {
    // base-256, two's complement; 0xff = negative
    const neg = first === 0xff;
    let v = neg ? -1 : first & 0x7f;
    for (let i = 1; i < len; i++) {
      v = v * 256 + b[off + i]!;
      if (!Number.isSafeInteger(v)) return NaN;
    }
    return v;
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) i++; // leading padding
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = b[i]!;
    if (c >= 0x30 && c <= 0x37) {
      v = v * 8 + (c - 0x30);
      digits++;
    } else if (c === 0x20 || c === 0) {
      break;
    } else {
      return NaN;
    }
  }
  // rest must be padding
  for (; i < end; i++) if (b[i] !== 0x20 && b[i] !== 0) return NaN;
  return digits === 0 ? 0 : v;
}

/** Is the 512-byte block at `off` all zeros? */
export function isZeroBlock(b: Uint8Array, off: number): boolean {
  for (let i = off; i < off + BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

/** Verify the header checksum (unsigned, or signed as some old tars wrote it). */
export function checksumOk(b: Uint8Array, off: number): boolean {
  const stored = numeric(b, off + 148, 8);
  if (Number.isNaN(stored)) return false;
  let u = 0;
  let s = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : b[off + i]!;
    u += c;
    s += c < 128 ? c : c - 256;
  }
  return stored === u || stored === s;
}

/** A PAX time value "sec[.frac]" (may be negative). */
export function parsePaxTime(v: string): TarTime | null {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(v);
  if (!m) return null;
  const neg = m[1] === '-';
  let sec = Number(m[2]);
  let nsec = m[3] ? Number((m[3] + '000000000').slice(0, 9)) : 0;
  if (!Number.isSafeInteger(sec)) return null;
  if (neg) {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1;
      nsec = 1e9 - nsec;
    }
  }
  return { sec, nsec };
}

interface PaxRecords {
  /** plain records (path, linkpath, size, uid, gid, mtime, …), values as byte strings */
  fields: Map<string, string>;
  xattrs: Map<string, Buffer> | null;
}

const SCHILY_XATTR = 'SCHILY.xattr.';
const LIBARCHIVE_XATTR = 'LIBARCHIVE.xattr.';

/**
 * Parse PAX extended header data ("%d %s=%s\n" records). Xattr values are
 * kept as raw bytes (copies), everything else as byte strings. Throws
 * UnsafeTarError('bad-pax') for malformed records and ('sparse') for GNU
 * sparse keys.
 */
export function parsePax(data: Buffer, entryHint: string): PaxRecords {
  const fields = new Map<string, string>();
  let xattrs: Map<string, Buffer> | null = null;
  let libarchive: Map<string, Buffer> | null = null;
  let pos = 0;
  while (pos < data.length) {
    // trailing NUL padding is tolerated
    if (data[pos] === 0) {
      for (let i = pos; i < data.length; i++) if (data[i] !== 0) throw unsafe(entryHint, 'bad-pax', 'malformed PAX header (data after NUL)');
      break;
    }
    let len = 0;
    let i = pos;
    while (i < data.length && data[i]! >= 0x30 && data[i]! <= 0x39 && i - pos < 12) {
      len = len * 10 + (data[i]! - 0x30);
      i++;
    }
    if (i === pos || data[i] !== 0x20 || len < 5 || pos + len > data.length || data[pos + len - 1] !== 0x0a) {
      throw unsafe(entryHint, 'bad-pax', `malformed PAX record at offset ${pos}`);
    }
    const recEnd = pos + len - 1; // at '\n'
    const keyStart = i + 1;
    const eq = data.indexOf(0x3d, keyStart);
    if (eq < 0 || eq >= recEnd || eq === keyStart) throw unsafe(entryHint, 'bad-pax', `malformed PAX record at offset ${pos}`);
    const key = latin1(data, keyStart, eq);
    if (key.startsWith(SCHILY_XATTR)) {
      (xattrs ??= new Map()).set(key.slice(SCHILY_XATTR.length), Buffer.from(data.subarray(eq + 1, recEnd)));
    } else if (key.startsWith(LIBARCHIVE_XATTR)) {
      // libarchive: URL-encoded name, base64 value
      let name: string;
      try {
        name = bstr(decodeURIComponent(key.slice(LIBARCHIVE_XATTR.length)));
      } catch {
        throw unsafe(entryHint, 'bad-pax', `malformed xattr name in PAX key ${JSON.stringify(key)}`);
      }
      (libarchive ??= new Map()).set(name, Buffer.from(latin1(data, eq + 1, recEnd), 'base64'));
    } else if (key.startsWith('GNU.sparse.')) {
      throw unsafe(entryHint, 'sparse', `GNU sparse files are not supported (PAX key ${key})`);
    } else {
      fields.set(key, latin1(data, eq + 1, recEnd));
    }
    pos += len;
  }
  if (libarchive) {
    for (const [k, v] of libarchive) if (!xattrs?.has(k)) (xattrs ??= new Map()).set(k, v);
  }
  return { fields, xattrs };
}

// ---------------------------------------------------------------- encoding

const TYPEFLAG: Record<EntryType, number> = {
  file: T.REG,
  link: T.LINK,
  symlink: T.SYM,
  char: T.CHR,
  block: T.BLK,
  dir: T.DIR,
  fifo: T.FIFO,
};

const MAX_OCTAL7 = 0o7777777;
const MAX_OCTAL11 = 0o77777777777;

function writeOctal(b: Buffer, off: number, len: number, v: number): void {
  // len-1 digits + NUL, like Go's archive/tar
  const s = v.toString(8).padStart(len - 1, '0');
  b.write(s, off, len - 1, 'latin1');
  b[off + len - 1] = 0;
}

function writeStr(b: Buffer, off: number, len: number, s: string): void {
  b.write(s, off, Math.min(len, s.length), 'latin1');
}

/** Split a name into ustar prefix (≤155) and name (≤100) at a '/', or null. */
function splitUstar(name: string): [string, string] | null {
  if (name.length <= 100) return ['', name];
  if (name.length > 256) return null;
  let i = name.length - 1;
  // find a '/' such that name part ≤ 100 and prefix ≤ 155
  for (i = Math.min(name.length - 1, 155); i > 0; i--) {
    if (name.charCodeAt(i) === 0x2f) {
      const prefix = name.slice(0, i);
      const rest = name.slice(i + 1);
      if (rest.length > 0 && rest.length <= 100 && prefix.length <= 155) return [prefix, rest];
      if (rest.length > 100) return null;
    }
  }
  return null;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const keyB = Buffer.from(key, 'latin1');
  const base = keyB.length + value.length + 3; // ' ', '=', '\n'
  let len = base + 1;
  while (String(len).length + base !== len) len = String(len).length + base;
  return Buffer.concat([Buffer.from(`${len} `, 'latin1'), keyB, Buffer.from('=', 'latin1'), value, Buffer.from('\n', 'latin1')]);
}

function formatTime(t: TarTime): string {
  if (t.nsec === 0) return String(t.sec);
  let sec = t.sec;
  let nsec = t.nsec;
  let sign = '';
  if (sec < 0) {
    // -1.25 is sec=-2 nsec=750000000
    sign = '-';
    sec = -(sec + 1);
    nsec = 1e9 - nsec;
  }
  return `${sign}${sec}.${String(nsec).padStart(9, '0').replace(/0+$/, '')}`;
}

function ustarBlock(h: TarHeader, name: string, prefix: string, linkname: string, typeflag: number, size: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  writeStr(b, 0, 100, name);
  writeOctal(b, 100, 8, h.mode & 0o7777);
  writeOctal(b, 108, 8, h.uid <= MAX_OCTAL7 && h.uid >= 0 ? h.uid : 0);
  writeOctal(b, 116, 8, h.gid <= MAX_OCTAL7 && h.gid >= 0 ? h.gid : 0);
  writeOctal(b, 124, 12, size <= MAX_OCTAL11 ? size : 0);
  writeOctal(b, 136, 12, h.mtime.sec >= 0 && h.mtime.sec <= MAX_OCTAL11 ? h.mtime.sec : 0);
  b.fill(0x20, 148, 156);
  b[156] = typeflag;
  writeStr(b, 157, 100, linkname);
  b.write('ustar\x0000', 257, 8, 'latin1');
  writeStr(b, 265, 32, h.uname);
  writeStr(b, 297, 32, h.gname);
  if (h.type === 'char' || h.type === 'block') {
    writeOctal(b, 329, 8, h.devmajor <= MAX_OCTAL7 ? h.devmajor : 0);
    writeOctal(b, 337, 8, h.devminor <= MAX_OCTAL7 ? h.devminor : 0);
  } else {
    writeOctal(b, 329, 8, 0);
    writeOctal(b, 337, 8, 0);
  }
  writeStr(b, 345, 155, prefix);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0'), 148, 6, 'latin1');
  b[154] = 0;
  b[155] = 0x20;
  return b;
}

export function padding(size: number): number {
  const r = size % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}

/**
 * Encode one entry's header block(s): an optional PAX 'x' header (for long or
 * non-ASCII names, big ids/sizes, sub-second or out-of-range mtimes, atime,
 * xattrs) followed by the ustar header. The entry's data (h.size bytes, then
 * zero padding to 512) is written by the caller. Deterministic.
 */
export function encodeHeader(h: TarHeader): Buffer {
  const pax: Buffer[] = [];
  let name = h.name;
  if (h.type === 'dir' && !name.endsWith('/')) name += '/';
  let split = isAscii(name) ? splitUstar(name) : null;
  if (!split) {
    pax.push(paxRecord('path', fromBstr(name)));
    split = ['', name.slice(0, 100)];
  }
  let linkname = h.linkname;
  if (linkname.length > 100 || !isAscii(linkname)) {
    pax.push(paxRecord('linkpath', fromBstr(linkname)));
    linkname = linkname.slice(0, 100);
  }
  const size = h.type === 'file' ? h.size : 0;
  if (h.uid > MAX_OCTAL7 || h.uid < 0) pax.push(paxRecord('uid', Buffer.from(String(h.uid))));
  if (h.gid > MAX_OCTAL7 || h.gid < 0) pax.push(paxRecord('gid', Buffer.from(String(h.gid))));
  if (size > MAX_OCTAL11) pax.push(paxRecord('size', Buffer.from(String(size))));
  if (h.mtime.nsec !== 0 || h.mtime.sec < 0 || h.mtime.sec > MAX_OCTAL11) pax.push(paxRecord('mtime', Buffer.from(formatTime(h.mtime))));
  if (h.atime) pax.push(paxRecord('atime', Buffer.from(formatTime(h.atime))));
  if (h.uname.length > 32 || !isAscii(h.uname)) pax.push(paxRecord('uname', fromBstr(h.uname)));
  if (h.gname.length > 32 || !isAscii(h.gname)) pax.push(paxRecord('gname', fromBstr(h.gname)));
  if ((h.type === 'char' || h.type === 'block') && (h.devmajor > MAX_OCTAL7 || h.devminor > MAX_OCTAL7)) {
    pax.push(paxRecord('SCHILY.devmajor', Buffer.from(String(h.devmajor))));
    pax.push(paxRecord('SCHILY.devminor', Buffer.from(String(h.devminor))));
  }
  if (h.xattrs && h.xattrs.size > 0) {
    const names = [...h.xattrs.keys()].sort();
    for (const n of names) pax.push(paxRecord('SCHILY.xattr.' + n, h.xattrs.get(n)!));
  }
  const main = ustarBlock(h, split[1], split[0], linkname, TYPEFLAG[h.type], size);
  if (pax.length === 0) return main;
  const data = Buffer.concat(pax);
  // Go's archive/tar names PAX headers "<dir>/PaxHeaders.0/<base>"
  const trimmed = name.replace(/\/+$/, '');
  const slash = trimmed.lastIndexOf('/');
  const paxName = (slash >= 0 ? trimmed.slice(0, slash + 1) : '') + 'PaxHeaders.0/' + trimmed.slice(slash + 1);
  const ph: TarHeader = {
    name: '',
    linkname: '',
    type: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: data.length,
    mtime: { sec: 0, nsec: 0 },
    devmajor: 0,
    devminor: 0,
    uname: '',
    gname: '',
    xattrs: null,
  };
  const phName = isAscii(paxName) ? paxName.slice(0, 100) : 'PaxHeaders.0/entry';
  const pblock = ustarBlock(ph, phName, '', '', T.PAX, data.length);
  return Buffer.concat([pblock, data, Buffer.alloc(padding(data.length)), main]);
}

/** End-of-archive marker: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);
