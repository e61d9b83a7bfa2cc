/**
 * A durable state file plus an append-only journal with group commit — the
 * metadata store of both daemons.
 *
 * Layout (in `dir`): `<name>.state` (a JSON snapshot of the whole state) and
 * `<name>.journal` (records appended since that snapshot). A journal record is
 * `u32 length | u32 crc32 | JSON`. `append()` resolves once its record is on
 * disk (the journal is opened O_DSYNC); records appended while a write is in flight are
 * written together by the next one (group commit: concurrent requests share an
 * fsync, and the fsync runs on libuv's thread pool, never blocking the event
 * loop). On open, records are replayed until the first torn or corrupt one,
 * where the journal is truncated: a crash at any instant leaves the state as it
 * was after some prefix of the acknowledged-or-not records, and every
 * acknowledged record is in that prefix.
 *
 * Compaction writes a new state file (temp + fsync + rename + directory fsync)
 * and then empties the journal. Records are idempotent full-value puts and
 * deletes, so replaying a journal over a newer state (a crash between the
 * rename and the truncation) converges to the same state.
 */
import { constants } from 'node:fs';
import { type FileHandle, open as fsOpen, mkdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir } from './fsutil.js';

const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

export function crc32(buf: Uint8Array): number {
  let c = -1;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

const HEADER = 8;
/** A record larger than this is treated as corruption on replay. */
const MAX_RECORD = 64 << 20;

export function encodeRecord(rec: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(rec), 'utf8');
  const out = Buffer.allocUnsafe(HEADER + body.length);
  out.writeUInt32LE(body.length, 0);
  out.writeUInt32LE(crc32(body), 4);
  body.copy(out, HEADER);
  return out;
}

/** Decode records; returns them and the byte length of the valid prefix. */
export function decodeRecords<R>(buf: Buffer): { records: R[]; validBytes: number } {
  const records: R[] = [];
  let off = 0;
  while (off + HEADER <= buf.length) {
    const len = buf.readUInt32LE(off);
    const crc = buf.readUInt32LE(off + 4);
    if (len > MAX_RECORD || off + HEADER + len > buf.length) break;
    const body = buf.subarray(off + HEADER, off + HEADER + len);
    if (crc32(body) !== crc) break;
    try {
      records.push(JSON.parse(body.toString('utf8')) as R);
    } catch {
      break;
    }
    off += HEADER + len;
  }
  return { records, validBytes: off };
}

export interface JournalOptions {
  dir: string;
  name: string;
  /** Compact when the journal grows beyond this (default 8 MiB). */
  compactAfterBytes?: number;
  /** Called once when a write fails: the caller must stop (the files stay consistent). */
  onFatal: (e: Error) => void;
}

export interface Opened<R> {
  journal: Journal<R>;
  /** The last state snapshot (null if none). */
  state: unknown;
  /** Records to replay on top of it, in order. */
  records: R[];
  /** Bytes of a torn/corrupt journal tail that were discarded. */
  discardedBytes: number;
}

export class Journal<R> {
  private pending: { buf: Buffer; resolve: () => void; reject: (e: Error) => void }[] = [];
  private flushing: Promise<void> | null = null;
  private failed: Error | null = null;
  private size: number;
  private snapshotFn: (() => unknown) | null = null;
  private compacting = false;
  /** Number of fdatasync'd group commits (tests, benchmarks). */
  commits = 0;

  private constructor(
    private readonly opts: JournalOptions,
    private fh: FileHandle,
    size: number,
  ) {
    this.size = size;
  }

  private static paths(o: JournalOptions) {
    return { state: path.join(o.dir, `${o.name}.state`), journal: path.join(o.dir, `${o.name}.journal`) };
  }

  static async open<R>(opts: JournalOptions): Promise<Opened<R>> {
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    const p = Journal.paths(opts);
    let state: unknown = null;
    try {
      state = JSON.parse(await readFile(p.state, 'utf8'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${p.state}: unreadable state file: ${(e as Error).message}`);
    }
    await rm(`${p.state}.tmp`, { force: true });
    // O_DSYNC: each append is durable when write() returns — one thread-pool
    // round trip per group commit instead of write + fdatasync
    const fh = await fsOpen(p.journal, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND | constants.O_DSYNC, 0o600);
    const buf = await fh.readFile();
    const { records, validBytes } = decodeRecords<R>(buf);
    if (validBytes < buf.length) {
      await fh.truncate(validBytes);
      await fh.datasync();
    }
    await fsyncDir(opts.dir);
    return { journal: new Journal<R>(opts, fh, validBytes), state, records: records, discardedBytes: buf.length - validBytes };
  }

  /** How to produce a full state snapshot, for compaction. */
  onSnapshot(fn: () => unknown): void {
    this.snapshotFn = fn;
  }

  append(rec: R): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const buf = encodeRecord(rec);
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ buf, resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length) {
        const batch = this.pending;
        this.pending = [];
        try {
          if (this.failed) throw this.failed;
          const data = batch.length === 1 ? batch[0]!.buf : Buffer.concat(batch.map((b) => b.buf));
          await this.fh.write(data, 0, data.length, null);
          this.size += data.length;
          this.commits++;
          for (const b of batch) b.resolve();
        } catch (e) {
          this.fail(e);
          for (const b of batch) b.reject(this.failed!);
        }
        if (!this.failed && this.size > (this.opts.compactAfterBytes ?? 8 << 20) && this.snapshotFn && !this.compacting) await this.compact();
      }
    } finally {
      this.flushing = null;
    }
  }

  private fail(e: unknown): void {
    if (this.failed) return;
    this.failed = e instanceof Error ? e : new Error(String(e));
    this.opts.onFatal(this.failed);
  }

  /**
   * Write the current state and empty the journal. Runs between group commits
   * (so the journal holds exactly the records the snapshot covers).
   */
  private async compact(): Promise<void> {
    this.compacting = true;
    try {
      const p = Journal.paths(this.opts);
      const data = Buffer.from(JSON.stringify(this.snapshotFn!()), 'utf8');
      const tmp = await fsOpen(`${p.state}.tmp`, 'w', 0o600);
      try {
        await tmp.writeFile(data);
        await tmp.datasync();
      } finally {
        await tmp.close();
      }
      await rename(`${p.state}.tmp`, p.state);
      await fsyncDir(this.opts.dir);
      await this.fh.truncate(0);
      await this.fh.datasync();
      this.size = 0;
    } catch (e) {
      this.fail(e);
    } finally {
      this.compacting = false;
    }
  }

  /** Force a compaction now (tests; shutdown). */
  async compactNow(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.snapshotFn && !this.failed) await this.compact();
  }

  async close(): Promise<void> {
    while (this.flushing) await this.flushing;
    await this.fh.close();
  }
}
