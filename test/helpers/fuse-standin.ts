/**
 * A real FUSE file system standing in for a CVMFS client: fuse-overlayfs
 * serving a directory tree (read-only) at a mount point, run in the
 * foreground so that the test holds its pid. `kill9()` leaves what a killed
 * cvmfs2 leaves (the mount, and every overlay with a lower on it, answer
 * ENOTCONN); `stop()` is a stalled client (every request on it waits).
 * Never touch a stopped mount from the test process: the call would hang
 * the test; ask through the code under test, which probes in a helper.
 *
 * StandinCvmfs is the host of the volume front-ends' fault tests (Docker
 * volume plugin, CSI, FlexVolume): a /cvmfs with a stand-in client for
 * cms.cern.ch and a plain directory for atlas.cern.ch, one per test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MNT_DETACH, umount } from '../../src/core/host/sys.js';
import { unmountBelow } from '../graphdriver/harness.js';
import { tempDir } from './env.js';

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

/** Poll `f` every 100 ms until it holds (true) or `ms` have passed (false). */
export async function until(f: () => boolean, ms = 8000): Promise<boolean> {
  const t0 = Date.now();
  while (!f()) {
    if (Date.now() - t0 > ms) return false;
    await sleep(100);
  }
  return true;
}

/**
 * A host's /cvmfs, a new one per test (setUp in beforeEach, tearDown in
 * afterEach after the daemon under test stopped) below `tempDir(prefix)`:
 * `<dir>/cvmfs/cms.cern.ch` served by a FuseStandin of `<dir>/tree`
 * (`etc/hello`), `<dir>/cvmfs/atlas.cern.ch` a plain directory (`README`).
 */
export class StandinCvmfs {
  private readonly base: string;
  private n = 0;
  /** This test's directory. */
  dir = '';
  /** What the stand-in serves. */
  tree = '';
  /** The host's CVMFS root (`--cvmfs-root`). */
  cvmfs = '';
  /** The clients of cms.cern.ch mounted, the first one first. */
  readonly fuses: FuseStandin[] = [];

  constructor(prefix: string) {
    this.base = tempDir(prefix);
  }

  /** The first client of cms.cern.ch: the one the test stops or kills. */
  get cms(): FuseStandin {
    return this.fuses[0]!;
  }

  async setUp(): Promise<void> {
    this.dir = path.join(this.base, String(this.n++));
    this.tree = path.join(this.dir, 'tree');
    this.cvmfs = path.join(this.dir, 'cvmfs');
    mkdirSync(path.join(this.tree, 'etc'), { recursive: true });
    writeFileSync(path.join(this.tree, 'etc', 'hello'), 'hello from cms\n');
    mkdirSync(path.join(this.cvmfs, 'cms.cern.ch'), { recursive: true });
    mkdirSync(path.join(this.cvmfs, 'atlas.cern.ch'), { recursive: true });
    writeFileSync(path.join(this.cvmfs, 'atlas.cern.ch', 'README'), 'atlas\n');
    this.fuses.push(await FuseStandin.mount(this.tree, path.join(this.cvmfs, 'cms.cern.ch')));
  }

  /** After a kill -9: the admin (or autofs) detaches the dead client and mounts a new one. */
  async newClient(): Promise<void> {
    this.cms.detach();
    this.fuses.push(await FuseStandin.mount(this.tree, path.join(this.cvmfs, 'cms.cern.ch')));
  }

  /** Every client killed (a stopped one continued first), everything below the directory unmounted. */
  async tearDown(): Promise<void> {
    while (this.fuses.length) await this.fuses.pop()!.cleanup();
    if (this.dir !== '') unmountBelow(this.dir);
  }
}
