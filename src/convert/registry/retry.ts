/**
 * The registry client's one retry policy: a bounded number of attempts,
 * exponential backoff with jitter, the server's `Retry-After` honoured (429,
 * 503), the run's abort signal obeyed while waiting, and a clear error naming
 * what was tried and how often once the attempts are used up.
 *
 * Two forms of the same thing: `withRetries(policy, what, fn)` runs `fn`
 * until it returns (an attempt asks for another by throwing `RetryLater`),
 * and `Retrier` is the state behind it for loops that cannot be a callback
 * (a generator that yields a blob while resuming it).
 */
import type { Logger } from 'pino';
import { RegistryError } from '../errors.js';
import { sleep } from '../../core/util/concurrency.js';

/** HTTP statuses worth another attempt. */
export const RETRY_STATUS: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);

/** Longest wait between two attempts, whatever the server asks. */
const MAX_DELAY_MS = 60_000;

/** Delay before a retry: Retry-After (seconds or HTTP date) if given, else exponential with ±25 % jitter; capped at 60 s. */
export function retryDelay(attempt: number, retryAfter: string | null, baseMs: number): number {
  if (retryAfter) {
    const secs = Number(retryAfter);
    if (retryAfter.trim() !== '' && Number.isFinite(secs) && secs >= 0) return Math.min(secs * 1000, MAX_DELAY_MS);
    const t = Date.parse(retryAfter);
    if (!Number.isNaN(t)) return Math.min(Math.max(0, t - Date.now()), MAX_DELAY_MS);
  }
  const d = Math.min(baseMs * 2 ** attempt, MAX_DELAY_MS);
  return Math.round(d * (0.75 + Math.random() * 0.5));
}

export interface RetryPolicy {
  /** Attempts after the first. */
  retries: number;
  /** Base delay of the exponential backoff. */
  backoffMs: number;
  signal?: AbortSignal | undefined;
  log?: Logger | undefined;
}

/** Thrown by an attempt to ask for another one (after the backoff, or the server's Retry-After). */
export class RetryLater extends Error {
  constructor(
    readonly reason: unknown,
    readonly retryAfter: string | null = null,
    readonly status?: number,
  ) {
    super(describeCause(reason));
  }

  /** For a response with a retryable status (its body is drained by the caller). */
  static status(res: Response): RetryLater {
    return new RetryLater(`HTTP ${res.status}`, res.headers.get('retry-after'), res.status);
  }
}

/** The useful part of an error: undici's `fetch failed` carries the reason in `cause`. */
export function describeCause(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  return e.cause instanceof Error ? e.cause.message : e.message;
}

/** Builds the error thrown when no attempt is left. */
type GiveUp = (cause: unknown, attempts: number, status: number | undefined) => unknown;

function plural(n: number): string {
  return `${n} attempt${n === 1 ? '' : 's'}`;
}

/** Default: an `unavailable` RegistryError naming what was tried, why it failed and how often. */
function giveUpError(what: string): GiveUp {
  return (cause, attempts, status) => new RegistryError('unavailable', `${what}: ${describeCause(cause)} (after ${plural(attempts)})`, status, { cause });
}

/** Attempt bookkeeping of one retried operation. */
export class Retrier {
  /** 0-based number of the current attempt. */
  attempt = 0;
  private readonly giveUp: GiveUp;

  constructor(
    private readonly policy: RetryPolicy,
    readonly what: string,
    giveUp?: GiveUp,
  ) {
    this.giveUp = giveUp ?? giveUpError(what);
  }

  /** No attempt is left after this one: the attempt should answer with what it has. */
  get last(): boolean {
    return this.attempt >= this.policy.retries;
  }

  /**
   * The current attempt failed with a retryable `cause`: wait, then return for
   * the next attempt. Throws the give-up error when none is left, and the
   * abort reason when the run was cancelled.
   */
  async again(cause: unknown, retryAfter: string | null = null, status?: number): Promise<void> {
    const signal = this.policy.signal;
    if (signal?.aborted) throw signal.reason ?? cause;
    if (this.last) throw this.giveUp(cause, this.attempt + 1, status);
    const delayMs = retryDelay(this.attempt, retryAfter, this.policy.backoffMs);
    this.policy.log?.info(
      { what: this.what, attempt: this.attempt + 1, delayMs, ...(status ? { status } : { err: describeCause(cause) }) },
      'retrying after a transient failure',
    );
    this.attempt++;
    await sleep(delayMs, signal);
  }
}

/**
 * Run `fn` until it returns. An attempt that throws `RetryLater` is retried
 * (unless none is left: then the give-up error); anything else is thrown as is.
 */
export async function withRetries<T>(policy: RetryPolicy, what: string, fn: (r: Retrier) => Promise<T>, giveUp?: GiveUp): Promise<T> {
  const r = new Retrier(policy, what, giveUp);
  for (;;) {
    try {
      return await fn(r);
    } catch (e) {
      if (!(e instanceof RetryLater)) throw e;
      await r.again(e.reason, e.retryAfter, e.status);
    }
  }
}
