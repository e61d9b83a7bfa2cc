/**
 * Per-name readers/writer locks: operations touching the same names run one
 * after another, unrelated ones run concurrently (so durable writes of
 * unrelated requests can share one commit). A name can also be held
 * `shared`: many holders at once, excluded only by an exclusive holder — the
 * parent of snapshots being created (eight Prepares on one base image must
 * not queue behind each other's durable write; a Remove of that base must
 * wait for all of them). Waiters are served in arrival order per name (a
 * stream of shared holders cannot starve an exclusive one). Names are taken in
 * sorted order: no deadlocks.
 */
interface Waiter {
  exclusive: boolean;
  wake: () => void;
}

interface NameState {
  readers: number;
  writer: boolean;
  queue: Waiter[];
}

export class KeyedMutex {
  private readonly names = new Map<string, NameState>();

  private state(n: string): NameState {
    let s = this.names.get(n);
    if (!s) this.names.set(n, (s = { readers: 0, writer: false, queue: [] }));
    return s;
  }

  private free(n: string, exclusive: boolean): boolean {
    const s = this.names.get(n);
    if (!s) return true;
    return s.queue.length === 0 && !s.writer && (!exclusive || s.readers === 0);
  }

  private take(n: string, exclusive: boolean): void {
    const s = this.state(n);
    if (exclusive) s.writer = true;
    else s.readers++;
  }

  private async lock(n: string, exclusive: boolean): Promise<void> {
    if (this.free(n, exclusive)) return this.take(n, exclusive);
    await new Promise<void>((wake) => this.state(n).queue.push({ exclusive, wake }));
  }

  private unlock(n: string, exclusive: boolean): void {
    const s = this.names.get(n)!;
    if (exclusive) s.writer = false;
    else s.readers--;
    // wake from the head: one writer, or every reader up to the next writer
    while (s.queue.length > 0 && !s.writer) {
      const w = s.queue[0]!;
      if (w.exclusive && s.readers > 0) break;
      s.queue.shift();
      if (w.exclusive) s.writer = true;
      else s.readers++;
      w.wake();
    }
    if (!s.writer && s.readers === 0 && s.queue.length === 0) this.names.delete(n);
  }

  /** The names to take and how, sorted; a name in both lists is taken exclusively. */
  private plan(exclusive: readonly string[], shared: readonly string[]): [string, boolean][] {
    const m = new Map<string, boolean>();
    for (const n of shared) if (n !== '') m.set(n, false);
    for (const n of exclusive) if (n !== '') m.set(n, true);
    return [...m].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  /** Take `exclusive` names alone and `shared` names alongside other shared holders; returns the release. */
  async acquire(exclusive: readonly string[], shared: readonly string[] = []): Promise<() => void> {
    const plan = this.plan(exclusive, shared);
    const held: [string, boolean][] = [];
    const release = () => {
      for (const [n, x] of held.splice(0).reverse()) this.unlock(n, x);
    };
    // fast path: everything free (the common case) — no await
    if (plan.every(([n, x]) => this.free(n, x))) {
      for (const [n, x] of plan) {
        this.take(n, x);
        held.push([n, x]);
      }
      return release;
    }
    for (const [n, x] of plan) {
      await this.lock(n, x);
      held.push([n, x]);
    }
    return release;
  }

  async with<T>(exclusive: readonly string[], fn: () => Promise<T>, shared: readonly string[] = []): Promise<T> {
    const release = await this.acquire(exclusive, shared);
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
