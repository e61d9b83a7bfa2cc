/**
 * tar-split: a layer tar without its file contents, in vbatts/tar-split's
 * JSON-lines format (`{"type":2,"payload":<raw bytes>}` segments for headers,
 * padding and the end of the archive; `{"type":1,"name":…,"size":…,
 * "payload":<crc64 of the content>}` for each entry). containers/storage
 * keeps one per layer (`overlay-layers/<id>.tar-split.gz`) and rebuilds the
 * exact layer tar from it and the unpacked files (`podman save`, `push`):
 * without it podman tars the directory anew, and the digest no longer
 * matches the image's diff ID ("Digest did not match").
 *
 * Recorded while a layer is unpacked, from the same bytes, with the same
 * parser as the extractor. The record is only as faithful as the unpacked
 * directory: each regular file with content is read back by its name.
 */
import { isUtf8 } from 'node:buffer';
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { createGzip } from 'node:zlib';
import { TarParser } from './parser.js';

// ---------------------------------------------------------------- crc64 (Go's hash/crc64 with the ISO table)

const TL = new Uint32Array(256 * 8);
const TH = new Uint32Array(256 * 8);
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let j = 0; j < 8; j++) {
    const odd = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi >>>= 1;
    if (odd) hi = (hi ^ 0xd8000000) >>> 0;
  }
  TL[i] = lo;
  TH[i] = hi;
}
// slicing-by-8 tables
for (let k = 1; k < 8; k++) {
  for (let i = 0; i < 256; i++) {
    const lo = TL[(k - 1) * 256 + i]!;
    const hi = TH[(k - 1) * 256 + i]!;
    TL[k * 256 + i] = (((lo >>> 8) | ((hi & 0xff) << 24)) ^ TL[lo & 0xff]!) >>> 0;
    TH[k * 256 + i] = ((hi >>> 8) ^ TH[lo & 0xff]!) >>> 0;
  }
}

/** CRC-64/ISO as Go's `crc64.New(crc64.MakeTable(crc64.ISO))` computes it. */
export class Crc64 {
  private lo = 0xffffffff;
  private hi = 0xffffffff;

  update(b: Uint8Array, start = 0, end = b.length): this {
    let lo = this.lo;
    let hi = this.hi;
    let i = start;
    for (; i + 8 <= end; i += 8) {
      const l = lo ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24));
      const h = hi ^ (b[i + 4]! | (b[i + 5]! << 8) | (b[i + 6]! << 16) | (b[i + 7]! << 24));
      lo =
        TL[1792 + (l & 0xff)]! ^
        TL[1536 + ((l >>> 8) & 0xff)]! ^
        TL[1280 + ((l >>> 16) & 0xff)]! ^
        TL[1024 + (l >>> 24)]! ^
        TL[768 + (h & 0xff)]! ^
        TL[512 + ((h >>> 8) & 0xff)]! ^
        TL[256 + ((h >>> 16) & 0xff)]! ^
        TL[h >>> 24]!;
      hi =
        TH[1792 + (l & 0xff)]! ^
        TH[1536 + ((l >>> 8) & 0xff)]! ^
        TH[1280 + ((l >>> 16) & 0xff)]! ^
        TH[1024 + (l >>> 24)]! ^
        TH[768 + (h & 0xff)]! ^
        TH[512 + ((h >>> 8) & 0xff)]! ^
        TH[256 + ((h >>> 16) & 0xff)]! ^
        TH[h >>> 24]!;
    }
    for (; i < end; i++) {
      const x = (lo ^ b[i]!) & 0xff;
      lo = ((lo >>> 8) | ((hi & 0xff) << 24)) ^ TL[x]!;
      hi = (hi >>> 8) ^ TH[x]!;
    }
    this.lo = lo >>> 0;
    this.hi = hi >>> 0;
    return this;
  }

  /** The sum, big-endian (what Go's `hash.Sum` appends). */
  digest(): Buffer {
    const out = Buffer.alloc(8);
    out.writeUInt32BE(~this.hi >>> 0, 0);
    out.writeUInt32BE(~this.lo >>> 0, 4);
    return out;
  }
}

// ---------------------------------------------------------------- the recorder

/** Go's filepath.Clean of a byte string (tar-split refuses two entries with the same cleaned name). */
export function cleanName(name: string): string {
  if (name === '') return '.';
  const abs = name.startsWith('/');
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!abs) out.push('..');
      continue;
    }
    out.push(part);
  }
  const s = out.join('/');
  return abs ? `/${s}` : s === '' ? '.' : s;
}

/** Longest segment payload in one line (as Go's tar-split: 1 MiB). */
const MAX_SEGMENT = 1 << 20;

/**
 * Turns a tar stream, pushed chunk by chunk, into tar-split lines. Never
 * throws: a stream it cannot record (a parse error, two entries with one
 * name) sets `failure` and the rest is ignored (the extractor reports bad tars).
 */
export class TarSplitRecorder {
  private readonly parser: TarParser;
  private segs: Buffer[] = [];
  private segLen = 0;
  private chunk: Buffer = Buffer.alloc(0);
  /** stream offset of `chunk[0]` */
  private base = 0;
  /** stream offset up to which bytes are accounted for (in a segment or as file content) */
  private cursor = 0;
  private position = 0;
  private cur: { name: string; size: number; crc: Crc64 | null } | null = null;
  private readonly seen = new Set<string>();
  failure: string | null = null;
  entries = 0;

  constructor(
    private readonly out: (line: string) => void,
    limits: { maxPaxHeaderBytes?: number | undefined } = {},
  ) {
    this.parser = new TarParser(
      {
        entry: (h) => {
          this.take(this.parser.headerEnd);
          this.flushSegment();
          const clean = cleanName(h.name);
          if (this.seen.has(clean)) throw new Error(`two entries named ${JSON.stringify(clean)} (tar-split keeps one file per name)`);
          this.seen.add(clean);
          this.cur = { name: h.name, size: h.size, crc: h.size > 0 ? new Crc64() : null };
        },
        data: (buf, start, end) => {
          this.take(this.base + start);
          this.cur?.crc?.update(buf, start, end);
          this.cursor = this.base + end;
        },
        entryEnd: () => {
          const c = this.cur!;
          this.cur = null;
          const raw = Buffer.from(c.name, 'latin1');
          const utf8 = isUtf8(raw);
          this.line({
            type: 1,
            ...(utf8 ? { name: raw.toString('utf8') } : { name_raw: raw.toString('base64') }),
            ...(c.size > 0 ? { size: c.size } : {}),
            payload: c.crc ? c.crc.digest().toString('base64') : null,
          });
          this.entries++;
        },
      },
      limits.maxPaxHeaderBytes !== undefined ? { maxPaxHeaderBytes: limits.maxPaxHeaderBytes } : {},
    );
  }

  push(chunk: Buffer): void {
    if (this.failure !== null) return;
    this.chunk = chunk;
    try {
      this.parser.push(chunk);
      // what is left of the chunk is header, extended header or padding bytes (or what follows the archive)
      this.take(this.base + chunk.length);
    } catch (e) {
      this.fail(e);
    }
    this.base += chunk.length;
  }

  /** The input is complete. */
  end(): void {
    if (this.failure !== null) return;
    try {
      this.parser.end();
      this.flushSegment();
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    this.failure = e instanceof Error ? e.message : String(e);
    this.segs = [];
  }

  /** Bytes of the current chunk from the cursor up to stream offset `to` belong to the pending segment. */
  private take(to: number): void {
    if (to <= this.cursor) return;
    const from = this.cursor - this.base;
    const piece = Buffer.from(this.chunk.subarray(from, to - this.base)); // a copy: chunks may be reused
    this.segs.push(piece);
    this.segLen += piece.length;
    this.cursor = to;
    if (this.segLen >= MAX_SEGMENT) this.flushSegment();
  }

  private flushSegment(): void {
    if (this.segLen === 0) return;
    const all = Buffer.concat(this.segs, this.segLen);
    this.segs = [];
    this.segLen = 0;
    for (let i = 0; i < all.length; i += MAX_SEGMENT) this.line({ type: 2, payload: all.subarray(i, i + MAX_SEGMENT).toString('base64') });
  }

  private line(e: Record<string, unknown>): void {
    this.out(`${JSON.stringify({ ...e, position: this.position++ })}\n`);
  }
}

// ---------------------------------------------------------------- a pass-through stream that records it

type TarSplitOutcome = { ok: true; entries: number; /** the gzip bytes, when recorded in memory */ data?: Buffer } | { ok: false; reason: string };

interface TarSplitTee {
  /** Pipe the uncompressed layer through this; it passes every byte on unchanged. */
  stream: Transform;
  /** Settles when the input ended and the record is complete (or was given up: then a file is removed). */
  done: Promise<TarSplitOutcome>;
  /** Stop and remove the file (the layer failed). */
  abort(): Promise<void>;
}

/**
 * Record the tar-split of the stream passing through, gzip-compressed like
 * containers/storage's: into `into.file`, or in memory (`{ memory: true }`:
 * `done` gives the bytes, for a layer streamed to an ingest).
 */
export function tarSplitTee(into: { file: string } | { memory: true }, limits: { maxPaxHeaderBytes?: number | undefined } = {}): TarSplitTee {
  const file = 'file' in into ? into.file : null;
  const gz = createGzip();
  const parts: Buffer[] = [];
  let writeError: Error | null = null;
  const onError = (e: Error) => {
    writeError ??= e;
  };
  gz.on('error', onError);
  let closed: Promise<void>;
  let out: ReturnType<typeof createWriteStream> | null = null;
  if (file !== null) {
    out = createWriteStream(file, { mode: 0o644 });
    out.on('error', onError);
    gz.pipe(out);
    closed = new Promise<void>((resolve) => out!.on('close', () => resolve()));
  } else {
    gz.on('data', (b: Buffer) => void parts.push(b));
    closed = new Promise<void>((resolve) => gz.on('close', () => resolve()));
  }
  let lines: string[] = [];
  const rec = new TarSplitRecorder((l) => void lines.push(l), limits);
  const drain = (cb: () => void) => {
    if (lines.length === 0 || writeError) {
      lines = [];
      return cb();
    }
    const ok = gz.write(lines.join(''));
    lines = [];
    if (ok) cb();
    else gz.once('drain', cb);
  };
  const giveUp = async (): Promise<void> => {
    if (out) gz.unpipe(out);
    gz.destroy();
    out?.destroy();
    await closed;
    if (file !== null) await fsp.rm(file, { force: true });
  };
  let settle!: (o: TarSplitOutcome) => void;
  const done = new Promise<TarSplitOutcome>((r) => (settle = r));
  const stream = new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      rec.push(chunk);
      drain(() => cb(null, chunk));
    },
    flush(cb: TransformCallback) {
      rec.end();
      const failure = rec.failure ?? writeError?.message ?? null;
      if (failure !== null) {
        void giveUp().then(() => {
          settle({ ok: false, reason: failure });
          cb();
        });
        return;
      }
      drain(() => {
        gz.end();
        void closed.then(async () => {
          if (writeError) {
            await giveUp();
            settle({ ok: false, reason: `writing the tar-split${file ? ` ${path.basename(file)}` : ''}: ${writeError.message}` });
          } else {
            settle({ ok: true, entries: rec.entries, ...(file === null ? { data: Buffer.concat(parts) } : {}) });
          }
          cb();
        });
      });
    },
  });
  return {
    stream,
    done,
    async abort() {
      await giveUp();
      settle({ ok: false, reason: 'aborted' });
    },
  };
}
