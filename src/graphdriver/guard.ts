/**
 * How every request of the graph driver (driver.ts) runs: not closed,
 * initialised, inside the gate (close() and Cleanup wait for it), holding
 * its layers' locks, and still on the Init it started on.
 */
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { Logger } from 'pino';
import { UnavailableError } from '../core/errors/errors.js';
import { Gate } from '../core/util/gate.js';
import { KeyedMutex } from '../core/util/keyed-mutex.js';

/** A streamed answer; `done` runs under the layers' locks once it ended. */
interface Streamed {
  stream: Readable;
  done?: () => Promise<void>;
}

export class Guard<A> {
  readonly locks = new KeyedMutex();
  readonly gate = new Gate();

  /** `need`: the current Init's state, or throws (closed, not initialised). */
  constructor(
    private readonly need: () => A,
    private readonly log: Logger,
  ) {}

  /**
   * Run `fn` on the current Init, holding the locks of `names`. `shared` names
   * (a parent whose children are created or removed) are held alongside other
   * shared holders.
   */
  run<T>(names: (a: A) => string[], fn: (a: A) => Promise<T>, shared: (a: A) => string[] = () => []): Promise<T> {
    const a0 = this.need();
    return this.gate.shared(() => this.locked(a0, names(a0), fn, shared(a0)));
  }

  locked<T>(a0: A, names: string[], fn: (a: A) => Promise<T>, shared: string[] = []): Promise<T> {
    return this.locks.with(
      names,
      async () => {
        const a = this.need();
        if (a !== a0) throw new UnavailableError('graph driver was re-initialised during the request');
        return fn(a);
      },
      shared,
    );
  }

  /**
   * The guard for a streamed answer: the gate is held until the stream ends,
   * so close() waits for it. With `done` (a naive Diff: its views stay
   * mounted), the layer locks are held until the stream ends too, then `done`
   * runs under them.
   */
  stream(names: string[], open: (a: A) => Promise<Streamed>): Promise<Readable> {
    const a0 = this.need();
    return new Promise<Readable>((resolve, reject) => {
      const until = async (s: Streamed) => {
        resolve(s.stream);
        await finished(s.stream).catch(() => undefined);
        await s.done?.().catch((e: unknown) => this.log.error({ err: e, layers: names }, 'cannot put the layers of a Diff'));
      };
      this.gate
        .shared(async () => {
          let s: Streamed | undefined;
          await this.locked(a0, names, async (a) => {
            s = await open(a);
            if (s.done) await until(s);
          });
          if (s && !s.done) await until(s);
        })
        .catch(reject);
    });
  }
}
