/**
 * A readers/writer gate: many `shared` sections at once, an `exclusive`
 * section waits for them to drain and holds new ones back. Mutations run
 * shared; Cleanup's scan of directories runs exclusive, so it never sees a
 * directory whose record is still being written.
 */
export class Gate {
  private active = 0;
  private exclusiveHeld = false;
  private waiters: (() => void)[] = [];

  /** Shared sections running now. */
  get running(): number {
    return this.active;
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exclusiveHeld) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      if (this.active === 0) this.wake();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.exclusiveHeld) await new Promise<void>((r) => this.waiters.push(r));
    this.exclusiveHeld = true;
    try {
      while (this.active > 0) await new Promise<void>((r) => this.waiters.push(r));
      return await fn();
    } finally {
      this.exclusiveHeld = false;
      this.wake();
    }
  }

  /** Wait until no section runs (for shutdown). */
  async drain(): Promise<void> {
    while (this.active > 0 || this.exclusiveHeld) await new Promise<void>((r) => this.waiters.push(r));
  }
}
