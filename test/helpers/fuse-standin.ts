/**
 * A real FUSE file system standing in for a CVMFS client: fuse-overlayfs
 * serving a directory tree (read-only) at a mount point, run in the
 * foreground so that the test holds its pid. `kill9()` leaves what a killed
 * cvmfs2 leaves (the mount, and every overlay with a lower on it, answer
 * ENOTCONN); `stop()` is a stalled client (every request on it waits).
 * Never touch a stopped mount from the test process: the call would hang
 * the test; ask through the code under test, which probes in a helper.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { MNT_DETACH, umount } from '../../src/core/sys.js';

function mountedFuse(mp: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mp && / - fuse/.test(l));
}

export class FuseStandin {
  private stopped = false;
  private detached = false;
  private constructor(
    readonly mountpoint: string,
    private readonly proc: ChildProcess,
  ) {}

  get pid(): number {
    return this.proc.pid!;
  }

  /** Serve `tree` at `mountpoint` (an existing, empty directory). */
  static async mount(tree: string, mountpoint: string): Promise<FuseStandin> {
    const proc = spawn('fuse-overlayfs', ['-f', '-o', `lowerdir=${tree}`, mountpoint], { stdio: 'ignore' });
    const t0 = Date.now();
    while (!mountedFuse(mountpoint)) {
      if (proc.exitCode !== null) throw new Error(`fuse-overlayfs exited with ${proc.exitCode}`);
      if (Date.now() - t0 > 10_000) {
        proc.kill('SIGKILL');
        throw new Error(`fuse-overlayfs did not mount ${mountpoint}`);
      }
      await sleep(20);
    }
    return new FuseStandin(mountpoint, proc);
  }

  /** A killed client: the mount stays and answers ENOTCONN. */
  async kill9(): Promise<void> {
    this.proc.kill('SIGKILL');
    if (this.proc.exitCode === null && this.proc.signalCode === null) await new Promise((r) => this.proc.once('exit', r));
  }

  /** A stalled client. */
  stop(): void {
    this.proc.kill('SIGSTOP');
    this.stopped = true;
  }

  cont(): void {
    this.proc.kill('SIGCONT');
    this.stopped = false;
  }

  /** Detach the mount (umount -l), as an admin does before mounting a new client there. */
  detach(): void {
    if (this.detached) return;
    this.detached = true;
    if (mountedFuse(this.mountpoint)) umount(this.mountpoint, MNT_DETACH);
  }

  /** Kill whatever is left (a stopped one is continued first) and detach the mount. */
  async cleanup(): Promise<void> {
    if (this.stopped) this.cont();
    await this.kill9();
    this.detach();
  }
}

/** What a call answers after a fault: the errno of a synchronous fs call, or 'ok'. */
export function errnoOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'EIO';
  }
  return 'ok';
}

/** The error a promise fails with and how long it took; throws if it succeeds. */
export async function failureOf(p: Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (error) {
    return { error, ms: Date.now() - t0 };
  }
  throw new Error('expected a failure');
}
