/**
 * Deadlines for everything the daemons ask of CVMFS (host.probeFs does the
 * asking, off the process: stack/probe-child.ts).
 *
 * Per key (a repository's mount point, or an overlay mount point) at most one
 * probe is outstanding: callers that arrive meanwhile are batched into the
 * next one, so a stalled mount collects one stuck call, not one per request.
 * Every caller waits at most `timeoutMs` from its call. Once a probe has been
 * overdue, the key counts as stalled: callers fail at once, and one new probe
 * is tried per `timeoutMs` (the mount may have been replaced by a new
 * client) until one answers. A late answer clears the stall.
 */
import type { Logger } from 'pino';
import { UnavailableError } from '../errors/errors.js';
import type { FsProbeOp, FsProbeResult, Host } from './host.js';

export const DEFAULT_CVMFS_TIMEOUT_MS = 10_000;

/** The mount point part of a CVMFS layer directory (before `/.layers/`, `/.chains/`, `/.flat/`), else the directory. */
export function cvmfsRootOf(dir: string): string {
  return /^(.*?)\/\.(?:layers|chains|flat)\//.exec(dir)?.[1] ?? dir;
}

/** The answer to one operation, or 'stalled' when none came within the deadline. */
type ProbeAnswer = FsProbeResult | 'stalled';

interface Waiter {
  ops: readonly FsProbeOp[];
  first: FsProbeOp | undefined;
  resolve(r: Map<string, FsProbeResult>): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

interface Inflight {
  sentAt: number;
  overdue: boolean;
  /** Mark it overdue now (idempotent): the deadline passed for it or for a caller waiting behind it. */
  expire(): void;
}

interface KeyState {
  inflight: Inflight | undefined;
  queue: Waiter[];
  /** When the last probe of this key went overdue (new probes of a stalled key: one per timeout after that). */
  lastExpired: number;
  /** Since when no probe answered in time (undefined: answering). */
  stalledSince: number | undefined;
}

interface CvmfsProbeOptions {
  host: Host;
  log: Logger;
  timeoutMs?: number | undefined;
  /** A probe became overdue (a stall begins or goes on): the daemon's counter. */
  onStall?: (key: string) => void;
}

const opKey = (o: FsProbeOp) => `${o.op} ${o.path}`;

export class StalledError extends UnavailableError {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message, 'CVMFS_THIN_CVMFS_STALLED');
  }
}

export class CvmfsProbe {
  readonly timeoutMs: number;
  private readonly keys = new Map<string, KeyState>();
  private readonly host: Host;
  private readonly log: Logger;
  private readonly onStall: (key: string) => void;

  constructor(o: CvmfsProbeOptions) {
    this.host = o.host;
    this.log = o.log;
    this.timeoutMs = o.timeoutMs ?? DEFAULT_CVMFS_TIMEOUT_MS;
    this.onStall = o.onStall ?? (() => undefined);
  }

  /** Since when `key` has not answered (ms timestamp), or undefined. */
  stalledSince(key: string): number | undefined {
    return this.keys.get(key)?.stalledSince;
  }

  private seconds(ms = this.timeoutMs): string {
    return `${+(ms / 1000).toFixed(3)} s`;
  }

  /**
   * Run `ops` under `key`; resolves with each operation's answer (by
   * `op path`), or rejects with a StalledError naming `what` after the
   * deadline. `first` (e.g. the statfs of the mount) goes before the ops of
   * every batch and, when it fails, ends the batch.
   */
  run(key: string, ops: readonly FsProbeOp[], what: string, first?: FsProbeOp): Promise<Map<string, FsProbeResult>> {
    let st = this.keys.get(key);
    if (!st) {
      st = { inflight: undefined, queue: [], lastExpired: 0, stalledSince: undefined };
      this.keys.set(key, st);
    }
    const now = Date.now();
    if (st.inflight?.overdue) {
      if (now - st.lastExpired < this.timeoutMs) {
        return Promise.reject(
          new StalledError(
            key,
            `${what}: CVMFS at ${key} has not answered for ${this.seconds(now - (st.stalledSince ?? st.inflight.sentAt))} (deadline ${this.seconds()}, cvmfs-timeout): the CVMFS client is stalled (server or proxy unreachable?)`,
          ),
        );
      }
      // try again once per deadline: the stuck probe stays in the helper, its late answer is still heard
      st.inflight = undefined;
    }
    const state = st;
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        ops,
        first,
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = state.queue.indexOf(w);
          if (i >= 0) state.queue.splice(i, 1);
          // a caller waited the whole deadline: the probe it waits for (or behind) is overdue
          state.inflight?.expire();
          reject(
            new StalledError(
              key,
              `${what}: CVMFS at ${key} did not answer within ${this.seconds()} (cvmfs-timeout): the CVMFS client is stalled (server or proxy unreachable?)`,
            ),
          );
        }, this.timeoutMs),
      };
      state.queue.push(w);
      if (!state.inflight) this.dispatch(key, state);
    });
  }

  private dispatch(key: string, st: KeyState): void {
    const batch = st.queue.splice(0);
    if (batch.length === 0) return;
    const first = batch.find((w) => w.first)?.first;
    const ops: FsProbeOp[] = first ? [{ ...first, required: true }] : [];
    const seen = new Set(ops.map(opKey));
    for (const w of batch) {
      for (const o of w.ops) {
        if (seen.has(opKey(o))) continue;
        seen.add(opKey(o));
        ops.push(o);
      }
    }
    const ctl = new AbortController();
    const inflight: Inflight = { sentAt: Date.now(), overdue: false, expire: () => expire() };
    st.inflight = inflight;
    const expire = () => {
      if (inflight.overdue) return;
      clearTimeout(overdue);
      inflight.overdue = true;
      st.lastExpired = Date.now();
      st.stalledSince ??= inflight.sentAt;
      ctl.abort();
      this.log.warn(
        { mount: key, timeoutMs: this.timeoutMs, since: new Date(st.stalledSince).toISOString() },
        'CVMFS does not answer within the deadline (cvmfs-timeout): requests that need it fail with CVMFS_THIN_CVMFS_STALLED until it answers',
      );
      this.onStall(key);
    };
    const overdue = setTimeout(expire, this.timeoutMs);
    const done = (results: FsProbeResult[] | Error) => {
      clearTimeout(overdue);
      for (const w of batch) clearTimeout(w.timer);
      if (!(results instanceof Error) && st.stalledSince !== undefined) {
        this.log.warn({ mount: key, stalledForMs: Date.now() - st.stalledSince }, 'CVMFS answers again');
        st.stalledSince = undefined;
      }
      const current = st.inflight === inflight;
      if (current) st.inflight = undefined;
      if (results instanceof Error) {
        // the helper died or was replaced: waiters that still wait are told (a retry may work)
        for (const w of batch) w.reject(new UnavailableError(`CVMFS at ${key}: ${results.message}`, 'CVMFS_THIN_LAYER_UNAVAILABLE', { cause: results }));
      } else {
        const by = new Map<string, FsProbeResult>();
        ops.forEach((o, i) => by.set(opKey(o), results[i] ?? { ok: false, code: 'ESKIPPED', message: `${o.op} ${o.path}: not run (an earlier probe failed)` }));
        // waiters that timed out already rejected: resolving them again is a no-op
        for (const w of batch) w.resolve(by);
      }
      if (current && st.queue.length > 0) this.dispatch(key, st);
      if (!st.inflight && st.queue.length === 0 && st.stalledSince === undefined) this.keys.delete(key);
    };
    this.host.probeFs(ops, ctl.signal).then(done, (e: unknown) => done(e instanceof Error ? e : new Error(String(e))));
  }

  /**
   * One operation under `key` (after `first`, whose failure is the answer):
   * its answer, or 'stalled'. Never throws.
   */
  async answer(key: string, op: FsProbeOp, what: string, first?: FsProbeOp): Promise<ProbeAnswer> {
    try {
      const r = await this.run(key, [op], what, first);
      const f = first && r.get(opKey(first));
      if (f && !f.ok) return f;
      return r.get(opKey(op)) ?? { ok: false, code: 'EIO', message: 'no answer' };
    } catch (e) {
      if (e instanceof StalledError) return 'stalled';
      return { ok: false, code: 'EIO', message: (e as Error).message };
    }
  }

  /** The answer to `op` within a result map of `run`. */
  static get(results: Map<string, FsProbeResult>, op: FsProbeOp): FsProbeResult | undefined {
    return results.get(opKey(op));
  }
}

/**
 * A small CVMFS file's text (profiles, markers) by the probe helper, on its
 * own (not batched with a mount's probes): null when unreadable, 'stalled'
 * past `timeoutMs`.
 */
export async function probeText(host: Host, file: string, timeoutMs: number): Promise<string | null | 'stalled'> {
  const r = await probeWithin(host, [{ op: 'read', path: file, text: true, max: 8 << 20 }], timeoutMs);
  if (r === 'stalled') return r;
  const a = r[0];
  return a?.ok ? (a.text ?? '') : null;
}

/**
 * `ops` asked of the probe helper on their own, with a deadline: the answers,
 * or 'stalled' past `timeoutMs` (the probe is then abandoned: a stalled
 * client holds the helper, not the caller).
 */
export async function probeWithin(host: Host, ops: readonly FsProbeOp[], timeoutMs: number): Promise<FsProbeResult[] | 'stalled'> {
  const ctl = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  try {
    const a = await Promise.race([host.probeFs(ops, ctl.signal), new Promise<'stalled'>((r) => (timer = setTimeout(() => r('stalled'), timeoutMs)))]);
    if (a === 'stalled') ctl.abort();
    return a;
  } finally {
    clearTimeout(timer);
  }
}
