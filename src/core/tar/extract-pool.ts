/**
 * The worker-thread side of extractLayer: a small pool of extraction
 * workers (reused, unreferenced and ended after a while when idle; loaded
 * through tsx when running from TypeScript sources) and WorkerJob, the
 * plumbing of one job in a pooled worker: its messages, its failure (from
 * the worker, its exit, or the abort signal) and whether the worker may go
 * back to the pool afterwards.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { deserializeError, type FromWorker, type ToWorker } from './extract-core.js';

interface PooledWorker {
  w: Worker;
  idleTimer?: NodeJS.Timeout;
}

const pool: PooledWorker[] = [];
const POOL_MAX = 2;
const IDLE_MS = 15_000;

function workerSource(): { url: URL; eval?: string } {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    // running from TypeScript sources (tsx, vitest): the worker needs tsx's loader too
    const url = new URL('./extract-worker.ts', here);
    // the ESM build of tsx's API (its CJS build registers a wrong hook path)
    const api = pathToFileURL(
      createRequire(here)
        .resolve('tsx/esm/api')
        .replace(/\.cjs$/, '.mjs'),
    ).href;
    const code = `import(${JSON.stringify(api)}).then((m) => { (m.register ?? m.default.register)(); return import(${JSON.stringify(url.href)}); });`;
    return { url, eval: code };
  }
  return { url: new URL('./extract-worker.js', here) };
}

function takeWorker(): PooledWorker {
  const pw = pool.pop();
  if (pw) {
    if (pw.idleTimer) clearTimeout(pw.idleTimer);
    pw.w.ref();
    return pw;
  }
  const src = workerSource();
  const w = src.eval ? new Worker(src.eval, { eval: true }) : new Worker(src.url);
  return { w };
}

function releaseWorker(pw: PooledWorker): void {
  pw.w.removeAllListeners('message');
  pw.w.removeAllListeners('error');
  pw.w.removeAllListeners('exit');
  if (pool.length >= POOL_MAX) {
    void pw.w.terminate();
    return;
  }
  pw.w.unref();
  pw.w.on('error', () => undefined);
  pw.w.once('exit', () => {
    const i = pool.indexOf(pw);
    if (i >= 0) pool.splice(i, 1);
  });
  pw.idleTimer = setTimeout(() => {
    const i = pool.indexOf(pw);
    if (i >= 0) pool.splice(i, 1);
    void pw.w.terminate();
  }, IDLE_MS);
  pw.idleTimer.unref();
  pool.push(pw);
}

/** Common plumbing of one job in a pooled worker. */
export class WorkerJob {
  failed: Error | null = null;
  reusable = true;
  /** the failure was reported by the worker, which is then idle again */
  private workerReported = false;
  readonly done: Promise<Extract<FromWorker, { t: 'done' }>>;
  private resolveDone!: (m: Extract<FromWorker, { t: 'done' }>) => void;
  private rejectDone!: (e: Error) => void;
  /** called once on failure, to stop the feeder */
  onFail: ((e: Error) => void) | null = null;
  readonly pw: PooledWorker;

  constructor(onMessage: (m: Exclude<FromWorker, { t: 'done' } | { t: 'error' }>) => void, signal: AbortSignal | undefined) {
    this.pw = takeWorker();
    const w = this.pw.w;
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.done.catch(() => undefined);
    w.on('message', (m: FromWorker) => {
      if (m.t === 'done') this.resolveDone(m);
      else if (m.t === 'error') {
        if (!this.failed) this.workerReported = true;
        this.fail(deserializeError(m.err));
      } else if (!this.failed) onMessage(m);
    });
    w.on('error', (e) => {
      this.reusable = false;
      this.fail(e);
    });
    w.on('exit', (code) => {
      this.reusable = false;
      this.fail(new Error(`tar extraction worker exited unexpectedly (code ${code})`));
    });
    if (signal) {
      const onAbort = (): void => this.fail(signal.reason instanceof Error ? signal.reason : new DOMException('aborted', 'AbortError'));
      signal.addEventListener('abort', onAbort, { once: true });
      void this.done.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => undefined);
    }
  }

  post(m: ToWorker, transfer?: ArrayBuffer[]): void {
    this.pw.w.postMessage(m, transfer);
  }

  fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    this.onFail?.(e);
    this.rejectDone(e);
  }

  /**
   * Return the worker to the pool after a completed job or one it refused
   * itself (it is idle then; data still queued for the failed job is
   * ignored), else end it: it may be in the middle of the job.
   */
  release(): void {
    if (this.reusable && (this.failed === null || this.workerReported)) {
      releaseWorker(this.pw);
    } else {
      this.pw.w.removeAllListeners();
      void this.pw.w.terminate();
    }
  }
}
