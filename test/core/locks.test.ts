import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { Gate } from '../../src/core/util/gate.js';
import { KeyedMutex } from '../../src/core/util/keyed-mutex.js';

/** A section body that counts how many run at once (`max`). */
function counter(ms: number) {
  const c = {
    inside: 0,
    max: 0,
    body: async () => {
      c.inside++;
      c.max = Math.max(c.max, c.inside);
      await sleep(ms);
      c.inside--;
    },
  };
  return c;
}

describe('KeyedMutex', () => {
  it('runs sections on the same name one at a time (fast path and queued path)', async () => {
    const m = new KeyedMutex();
    let inside = 0;
    let max = 0;
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        m.with(['k', i % 2 ? 'x' : ''], async () => {
          inside++;
          max = Math.max(max, inside);
          await sleep(2);
          order.push(i);
          inside--;
        }),
      ),
    );
    expect(max).toBe(1);
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('lets unrelated names run concurrently and releases after a failure', async () => {
    const m = new KeyedMutex();
    const c = counter(5);
    await Promise.all([m.with(['a'], c.body), m.with(['b'], c.body), m.with(['c'], c.body)]);
    expect(c.max).toBe(3);
    await expect(m.with(['a'], async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(await m.with(['a'], async () => 'free again')).toBe('free again');
  });

  it('does not deadlock when two sections take the same names in opposite order', async () => {
    const m = new KeyedMutex();
    const r = await Promise.all([m.with(['p', 'q'], async () => sleep(3).then(() => 1)), m.with(['q', 'p'], async () => sleep(3).then(() => 2))]);
    expect(r).toEqual([1, 2]);
  });

  it('lets shared holders of a name run together, and an exclusive one alone', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    let inside = 0;
    let max = 0;
    const child = (k: string) =>
      m.with(
        [k],
        async () => {
          inside++;
          max = Math.max(max, inside);
          await sleep(5);
          log.push(k);
          inside--;
        },
        ['parent'],
      );
    const all = [child('c1'), child('c2'), child('c3')];
    // the parent's own removal waits for every shared holder, and holds back the ones after it
    const removal = m.with(['parent'], async () => {
      log.push(`removal with ${inside} inside`);
    });
    all.push(child('c4'));
    await Promise.all([...all, removal]);
    expect(max).toBe(3);
    expect(log).toEqual(['c1', 'c2', 'c3', 'removal with 0 inside', 'c4']);
  });

  it('treats a name given both ways as exclusive, and releases shared names after a failure', async () => {
    const m = new KeyedMutex();
    const c = counter(3);
    await Promise.all([m.with(['p'], c.body, ['p']), m.with([], c.body, ['p'])]);
    expect(c.max).toBe(1);
    await expect(m.with(['a'], async () => Promise.reject(new Error('boom')), ['p'])).rejects.toThrow('boom');
    let ran = false;
    await m.with(['p'], async () => {
      ran = true;
    });
    expect(ran).toBe(true);
  });

  it('does not deadlock with shared and exclusive holds of the same names in opposite order', async () => {
    const m = new KeyedMutex();
    const r = await Promise.all([
      m.with(['a'], async () => sleep(3).then(() => 1), ['b']),
      m.with(['b'], async () => sleep(3).then(() => 2), ['a']),
      m.with([], async () => sleep(3).then(() => 3), ['a', 'b']),
    ]);
    expect(r).toEqual([1, 2, 3]);
  });
});

describe('Gate', () => {
  it('holds exclusive sections until shared ones drain, and new shared ones until it is done', async () => {
    const g = new Gate();
    const log: string[] = [];
    const s1 = g.shared(async () => {
      await sleep(10);
      log.push('s1');
    });
    const ex = g.exclusive(async () => {
      log.push('ex');
    });
    const s2 = g.shared(async () => {
      log.push('s2');
    });
    await Promise.all([s1, ex, s2]);
    expect(log).toEqual(['s1', 'ex', 's2']);
    await g.drain();
  });
});
