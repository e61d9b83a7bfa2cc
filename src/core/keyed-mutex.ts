/**
 * Per-name locks: operations touching the same names run one after another,
 * unrelated ones run concurrently (so durable writes of unrelated requests can
 * share one commit). Names are locked in sorted order: no deadlocks.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async acquire(names: readonly string[]): Promise<() => void> {
    const uniq = [...new Set(names.filter((n) => n !== ''))].sort();
    const releases: (() => void)[] = [];
    for (const n of uniq) {
      const prev = this.tails.get(n) ?? Promise.resolve();
      let release!: () => void;
      const mine = new Promise<void>((r) => (release = r));
      const tail = prev.then(() => mine);
      this.tails.set(n, tail);
      await prev;
      releases.push(() => {
        release();
        if (this.tails.get(n) === tail) this.tails.delete(n);
      });
    }
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const r of releases.reverse()) r();
    };
  }

  async with<T>(names: readonly string[], fn: () => Promise<T>): Promise<T> {
    // fast path: nobody holds any of the names (the common case) — take them without waiting
    if (names.every((n) => n === '' || !this.tails.has(n))) {
      const uniq = [...new Set(names.filter((n) => n !== ''))];
      let release!: () => void;
      const mine = new Promise<void>((r) => (release = r));
      for (const n of uniq) this.tails.set(n, mine);
      try {
        return await fn();
      } finally {
        release();
        for (const n of uniq) if (this.tails.get(n) === mine) this.tails.delete(n);
      }
    }
    const release = await this.acquire(names);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
