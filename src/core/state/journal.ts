/**
 * A durable state file plus an append-only journal with group commit — the
 * snapshotter's metadata store (the graph driver keeps one record file per
 * layer next to the layer's data, as dockerd's own drivers do; see
 * graphdriver/layer-store.ts).
 *
 * Layout (in `dir`): `<name>.state` (a JSON snapshot of the whole state) and
 * `<name>.journal` (records appended since that snapshot). A journal record is
 * `u32 length | u32 crc32 | JSON`. `append()` resolves once its record is on
 * disk. Records appended in the same turn of the event loop are written
 * together on the next `setImmediate` by one synchronous write to the journal,
 * which is opened O_DSYNC (group commit: concurrent requests share a sync).
 * The journal file is preallocated with zeros in 1 MiB steps and written in
 * place, so that a commit changes no file metadata (no file-system journal
 * commit, the reason LMDB and bbolt preallocate too); replay stops at the
 * first zero length.
 * Measured here: a synchronous O_DSYNC write takes ~0.4 ms, the same write
 * through the thread pool ~0.9 ms (thread wake-up latency), so for a single
 * client the synchronous write wins. While the store's owner serves several
 * requests (`busy`), a synchronous write would stall them all for the sync:
 * then the batch goes through the thread pool and the next one gathers
 * meanwhile (one write in flight at a time, so records stay in order).
 * On open, records are replayed until the first torn or corrupt one,
 * where the journal is truncated: a crash at any instant leaves the state as it
 * was after some prefix of the acknowledged-or-not records, and every
 * acknowledged record is in that prefix.
 *
 * A full file system (ENOSPC, EDQUOT) is a per-request error, not a fatal
 * one: the next preallocation step is reserved ahead of need (so a full disk
 * usually fails a reservation, not a commit); a commit that does not fit is
 * zeroed out and its requests rejected (CVMFS_THIN_IO_ENOSPC), and stores
 * apply a change in memory only once it is durable (`append`'s `durable`
 * callback, or after the promise resolved); compaction is retried later.
 *
 * Compaction writes a new state file (temp + fsync + rename + directory fsync)
 * and then empties the journal, after the continuations of the batch that
 * triggered it. Records are idempotent full-value puts and
 * deletes, so replaying a journal over a newer state (a crash between the
 * rename and the truncation) converges to the same state.
 */
import {
  closeSync,
  constants,
  fdatasyncSync,
  write as writeCb,
  fsyncSync,
  ftruncateSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { FailedPreconditionError, InternalError } from '../errors/errors.js';
import { fsyncDir } from '../fs/fsutil.js';
import { decodeRecords, encodeRecord } from './journal-records.js';
import type { Metrics } from '../telemetry/metrics.js';

export { crc32, decodeRecords, encodeRecord } from './journal-records.js';

const fsWrite = promisify(writeCb);

export interface JournalOptions {
  dir: string;
  name: string;
  /** Compact when the journal grows beyond this (default 8 MiB). */
  compactAfterBytes?: number;
  /** Called once when a write fails: the caller must stop (the files stay consistent). */
  onFatal: (e: Error) => void;
  /**
   * True while the daemon serves other requests besides the one appending: the
   * batch is then written through the thread pool instead of synchronously, so
   * the event loop goes on serving them while the disk syncs (group commit
   * becomes a pipeline: one write in flight, the next batch gathering). With a
   * single client the synchronous write is faster (no thread-pool round trip).
   */
  busy?: (() => boolean) | undefined;
  /** Told of every durable group commit: seconds of the write, records in it (metrics). */
  onCommit?: ((seconds: number, records: number) => void) | undefined;
}

/** Record journal commits as `journal_commit_seconds` / `journal_batch_records` with label `store`. */
export function journalMetrics(m: Metrics, store: string): JournalOptions['onCommit'] {
  if (!m.enabled) return undefined;
  return (seconds, records) => {
    m.observe('journal_commit_seconds', { store }, seconds);
    m.observe('journal_batch_records', { store }, records);
  };
}

interface Opened<R> {
  journal: Journal<R>;
  /** The last state snapshot (null if none). */
  state: unknown;
  /** Records to replay on top of it, in order. */
  records: R[];
  /** Bytes of a torn/corrupt journal tail that were discarded. */
  discardedBytes: number;
}

/** Errors of a full file system: the request fails, the journal stays usable. */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);
const isNoSpace = (e: unknown) => NO_SPACE.has((e as NodeJS.ErrnoException).code ?? '');
/** Preallocation step, and the free room below which the next step is reserved ahead. */
const STEP = 1 << 20;
const AHEAD = STEP / 2;

interface Pending {
  buf: Buffer;
  resolve: () => void;
  reject: (e: Error) => void;
  durable: (() => void) | undefined;
}

/** Positional write of all of `data` through the thread pool. */
async function writeFully(fd: number, data: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < data.length) off += (await fsWrite(fd, data, off, data.length - off, pos + off)).bytesWritten;
}

export class Journal<R> {
  private pending: Pending[] = [];
  /** An asynchronous write is in flight (see `busy`); `idle` waits for its end. */
  private writing = false;
  private idle: (() => void)[] = [];
  /** Compaction failed for lack of space: try again once the journal grew by another step (or threshold). */
  private compactRetryAt = 0;
  private compactScheduled = false;
  private closed = false;
  private scheduled = false;
  private failed: Error | null = null;
  private size: number;
  private allocated: number;
  private snapshotFn: (() => unknown) | null = null;
  /** Number of durable group commits (tests, benchmarks). */
  commits = 0;

  private constructor(
    private readonly opts: JournalOptions,
    private fd: number,
    size: number,
    allocated: number,
  ) {
    this.size = size;
    this.allocated = allocated;
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
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        throw new FailedPreconditionError(`${p.state}: unreadable state file: ${(e as Error).message}`, 'CVMFS_THIN_BAD_STATE', { cause: e });
    }
    await rm(`${p.state}.tmp`, { force: true });
    // O_DSYNC: each write is durable when write() returns
    const fd = openSync(p.journal, constants.O_RDWR | constants.O_CREAT | constants.O_DSYNC, 0o600);
    const buf = readFileSync(p.journal);
    const { records, validBytes } = decodeRecords<R>(buf);
    let discarded = 0;
    for (let i = validBytes; i < buf.length; i++) {
      if (buf[i] !== 0) {
        // a torn or corrupt record: zero everything after the valid prefix
        discarded = buf.length - validBytes;
        const zeros = Buffer.alloc(buf.length - validBytes);
        writeSync(fd, zeros, 0, zeros.length, validBytes);
        break;
      }
    }
    await fsyncDir(opts.dir);
    return { journal: new Journal<R>(opts, fd, validBytes, buf.length), state, records: records, discardedBytes: discarded };
  }

  /** How to produce a full state snapshot, for compaction. */
  onSnapshot(fn: () => unknown): void {
    this.snapshotFn = fn;
  }

  /**
   * Append a record; resolves once it is on disk. `durable` runs synchronously
   * right after the write (in append order, before any compaction snapshot):
   * the place to apply the change in memory, so that memory never holds a
   * change the disk lacks. A full file system rejects the request (code
   * CVMFS_THIN_IO_ENOSPC) and leaves the journal usable.
   */
  append(rec: R, durable?: () => void): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const buf = encodeRecord(rec);
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ buf, resolve, reject, durable });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    if (this.writing) return; // the write in flight flushes what gathered meanwhile when it ends
    const batch = this.pending;
    this.pending = [];
    if (batch.length === 0) return;
    const t0 = this.opts.onCommit ? process.hrtime.bigint() : 0n;
    let data: Buffer | null = null;
    try {
      if (this.failed) throw this.failed;
      data = batch.length === 1 ? batch[0]!.buf : Buffer.concat(batch.map((b) => b.buf));
      if (this.size + data.length > this.allocated) this.preallocate(this.size + data.length);
      if (this.opts.busy?.() && !this.closed) {
        // other requests are being served: write in the thread pool, so that the event loop
        // serves them while the disk syncs; what they append meanwhile is the next batch
        this.writing = true;
        writeFully(this.fd, data, this.size).then(
          () => this.written(batch, data!, t0),
          (e: unknown) => this.writeFailed(batch, data!, e),
        );
        return;
      }
      let off = 0;
      while (off < data.length) off += writeSync(this.fd, data, off, data.length - off, this.size + off);
    } catch (e) {
      this.writeFailed(batch, data, e);
      return;
    }
    this.written(batch, data, t0);
  }

  private writeFailed(batch: Pending[], data: Buffer | null, e: unknown): void {
    this.writing = false;
    const err = !this.failed && isNoSpace(e) && data ? this.noSpace(e, data.length) : (this.fail(e), this.failed!);
    for (const b of batch) b.reject(err);
    this.afterWrite();
  }

  private written(batch: Pending[], data: Buffer, t0: bigint): void {
    this.writing = false;
    this.size += data.length;
    this.commits++;
    if (this.opts.onCommit) this.opts.onCommit(Number(process.hrtime.bigint() - t0) / 1e9, batch.length);
    for (const b of batch) b.durable?.();
    for (const b of batch) b.resolve();
    if (this.size > Math.max(this.opts.compactAfterBytes ?? 8 << 20, this.compactRetryAt) && this.snapshotFn && !this.compactScheduled) {
      // after this turn's continuations: a store that applies a change once its
      // append resolved has applied it by then, so the snapshot holds it
      this.compactScheduled = true;
      setImmediate(() => {
        this.compactScheduled = false;
        if (this.writing) return; // the next write's end schedules it again
        if (!this.closed && !this.failed) this.compact();
      });
    }
    // reserve the next step ahead, so that a full disk fails a reservation rather than a commit
    if (this.allocated - this.size < AHEAD) {
      try {
        this.preallocate(this.size + AHEAD + 1);
      } catch (e) {
        if (!isNoSpace(e)) this.fail(e);
      }
    }
    this.afterWrite();
  }

  /** After an asynchronous write: what gathered meanwhile goes next (after this turn's continuations). */
  private afterWrite(): void {
    const waiters = this.idle;
    this.idle = [];
    for (const w of waiters) w();
    if (this.pending.length && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Resolves when no write is in flight. */
  private async settle(): Promise<void> {
    while (this.writing) await new Promise<void>((r) => this.idle.push(r));
  }

  /**
   * A write that found the file system full: nothing of the batch may survive
   * on disk (a record written in part or in whole would be replayed after a
   * crash although its request failed), so the attempted range is zeroed
   * (it lies in preallocated space, or beyond the end of the file).
   */
  private noSpace(e: unknown, attempted: number): Error {
    try {
      const zeros = Buffer.alloc(Math.min(attempted, Math.max(0, this.allocated - this.size)));
      let off = 0;
      while (off < zeros.length) off += writeSync(this.fd, zeros, off, zeros.length - off, this.size + off);
    } catch (z) {
      this.fail(z);
      return this.failed!;
    }
    return new InternalError(
      `metadata journal in ${this.opts.dir}: no space left on the device; the change was not made (${(e as Error).message})`,
      `CVMFS_THIN_IO_${(e as NodeJS.ErrnoException).code ?? 'ENOSPC'}`,
      { cause: e },
    );
  }

  /** Extend the file with zeros (1 MiB steps) up to at least `need` bytes. */
  private preallocate(need: number): void {
    const target = Math.ceil(need / STEP) * STEP;
    const zeros = Buffer.alloc(target - this.allocated);
    let off = 0;
    while (off < zeros.length) off += writeSync(this.fd, zeros, off, zeros.length - off, this.allocated + off);
    fdatasyncSync(this.fd);
    this.allocated = target;
  }

  private fail(e: unknown): void {
    if (this.failed) return;
    this.failed = e instanceof Error ? e : new Error(String(e));
    this.opts.onFatal(this.failed);
  }

  /**
   * Write the current state and empty the journal, synchronously (so no append
   * interleaves with it). Rare: once per `compactAfterBytes` of journal.
   */
  private compact(): void {
    const p = Journal.paths(this.opts);
    try {
      const data = Buffer.from(JSON.stringify(this.snapshotFn!()), 'utf8');
      const tmp = openSync(`${p.state}.tmp`, 'w', 0o600);
      try {
        let off = 0;
        while (off < data.length) off += writeSync(tmp, data, off, data.length - off);
        fdatasyncSync(tmp);
      } finally {
        closeSync(tmp);
      }
      renameSync(`${p.state}.tmp`, p.state);
      fsyncDirSync(this.opts.dir);
      ftruncateSync(this.fd, 0);
      fdatasyncSync(this.fd);
      this.size = 0;
      this.allocated = 0;
      this.compactRetryAt = 0;
    } catch (e) {
      if (!isNoSpace(e)) return this.fail(e);
      // the journal stays as it is (complete): try again after another step of it
      try {
        rmSync(`${p.state}.tmp`, { force: true });
      } catch {
        // removed at the next open
      }
      this.compactRetryAt = this.size + Math.min(STEP, this.opts.compactAfterBytes ?? 8 << 20);
    }
  }

  /** Force a compaction now (tests; shutdown). */
  async compactNow(): Promise<void> {
    this.flush();
    await this.settle();
    this.flush();
    await this.settle();
    if (this.snapshotFn && !this.failed) this.compact();
  }

  async close(): Promise<void> {
    await this.settle();
    this.closed = true;
    this.flush(); // synchronously: closed
    await this.settle();
    closeSync(this.fd);
  }
}

function fsyncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
