import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Journal } from '../../src/core/state/journal.js';
import { tempDir } from '../helpers/env.js';

interface Rec {
  k: string;
  v: number;
}

/** Replay what a reopened journal holds into a map. */
async function reopen(dir: string): Promise<Map<string, number>> {
  const o = await Journal.open<Rec>({
    dir,
    name: 'kv',
    onFatal: (e) => {
      throw e;
    },
  });
  const m = new Map(Object.entries((o.state ?? {}) as Record<string, number>));
  for (const r of o.records) m.set(r.k, r.v);
  await o.journal.close();
  return m;
}

// busy: batches written through the thread pool while the next one gathers (a daemon serving several clients)
describe.each([false, true])('journal compaction and the order of applying (busy: %s)', (busy) => {
  const base = tempDir('journal-compaction-');

  it('keeps the record that triggers compaction for a store that applies after its append resolved', async () => {
    const dir = path.join(base, 'after');
    const state = new Map<string, number>();
    const { journal } = await Journal.open<Rec>({
      dir,
      name: 'kv',
      onFatal: (e) => {
        throw e;
      },
      compactAfterBytes: 4 << 10,
      busy: () => busy,
    });
    journal.onSnapshot(() => Object.fromEntries(state));
    // as core/volumes/store.ts does: await the append, then apply
    const put = async (k: string, v: number) => {
      await journal.append({ k, v });
      state.set(k, v);
    };
    for (let i = 0; i < 200; i++) await put(`k${i}`, i);
    await Promise.all([put('a', 1), put('b', 2)]);
    await new Promise((r) => setImmediate(r));
    await journal.close();
    const got = await reopen(dir);
    expect(got.size).toBe(202);
    expect(got.get('k199')).toBe(199);
    expect(got.get('b')).toBe(2);
  });

  it('keeps every record for a store that applies in the durable callback', async () => {
    const dir = path.join(base, 'durable');
    const state = new Map<string, number>();
    const { journal } = await Journal.open<Rec>({
      dir,
      name: 'kv',
      onFatal: (e) => {
        throw e;
      },
      compactAfterBytes: 4 << 10,
      busy: () => busy,
    });
    journal.onSnapshot(() => Object.fromEntries(state));
    const put = (k: string, v: number) => journal.append({ k, v }, () => state.set(k, v));
    for (let i = 0; i < 100; i++) await Promise.all([put(`x${i}`, i), put(`y${i}`, -i)]);
    await journal.close();
    const got = await reopen(dir);
    expect(got.size).toBe(200);
    expect(got.get('y99')).toBe(-99);
  });
});
