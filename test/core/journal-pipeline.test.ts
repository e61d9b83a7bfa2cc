/**
 * The journal under concurrency (`busy`): a batch is written through the
 * thread pool while the next one gathers. Records stay in append order on
 * disk and in the `durable` callbacks, the event loop runs while a write is
 * in flight, close() waits for it, and a busy/idle mix loses nothing.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Journal } from '../../src/core/state/journal.js';
import { tempDir } from '../helpers/env.js';

interface Rec {
  c: number;
  i: number;
}
const fatal = (e: Error) => {
  throw e;
};

describe('journal pipeline (busy)', () => {
  const base = tempDir('journal-pipeline-');

  it('eight clients appending in loops: every record durable in append order, replayed in that order, batches shared', async () => {
    const dir = path.join(base, 'order');
    const { journal } = await Journal.open<Rec>({ dir, name: 'kv', onFatal: fatal, busy: () => true });
    const appended: string[] = [];
    const durable: string[] = [];
    await Promise.all(
      Array.from({ length: 8 }, async (_, c) => {
        for (let i = 0; i < 40; i++) {
          appended.push(`${c}/${i}`);
          await journal.append({ c, i }, () => durable.push(`${c}/${i}`));
        }
      }),
    );
    expect(durable).toEqual(appended);
    expect(journal.commits).toBeLessThan(320);
    await journal.close();
    const again = await Journal.open<Rec>({ dir, name: 'kv', onFatal: fatal });
    expect(again.records.map((r) => `${r.c}/${r.i}`)).toEqual(appended);
    expect(again.discardedBytes).toBe(0);
    await again.journal.close();
  });

  it('serves the event loop while a write is in flight (the synchronous path does not)', async () => {
    const ticksDuring = async (busy: boolean) => {
      const { journal } = await Journal.open<Rec>({ dir: path.join(base, `loop-${busy}`), name: 'kv', onFatal: fatal, busy: () => busy });
      let ticks = 0;
      let stop = false;
      const tick = () => {
        ticks++;
        if (!stop) setImmediate(tick);
      };
      let sum = 0;
      for (let i = 0; i < 20; i++) {
        const before = ticks;
        setImmediate(tick);
        await journal.append({ c: 0, i });
        stop = true;
        await new Promise((r) => setImmediate(r));
        sum += ticks - before;
        stop = false;
      }
      await journal.close();
      return sum;
    };
    // the synchronous write blocks the loop: the ticker gets one turn per append at most;
    // through the thread pool it turns while the disk syncs
    const sync = await ticksDuring(false);
    const pooled = await ticksDuring(true);
    expect(sync).toBeLessThanOrEqual(2 * 20);
    expect(pooled).toBeGreaterThan(sync);
  });

  it('close() waits for the write in flight; a busy/idle mix loses nothing', async () => {
    const dir = path.join(base, 'close');
    let busy = false;
    const { journal } = await Journal.open<Rec>({ dir, name: 'kv', onFatal: fatal, busy: () => busy });
    const acks: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      busy = i % 3 !== 0;
      acks.push(journal.append({ c: 1, i }));
      if (i % 7 === 0) await new Promise((r) => setImmediate(r));
    }
    busy = true;
    acks.push(journal.append({ c: 1, i: 50 }));
    await journal.close();
    await Promise.all(acks);
    const again = await Journal.open<Rec>({ dir, name: 'kv', onFatal: fatal });
    expect(again.records.map((r) => r.i)).toEqual(Array.from({ length: 51 }, (_, i) => i));
    await again.journal.close();
  });
});
