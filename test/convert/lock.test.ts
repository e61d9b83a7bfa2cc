/**
 * The converter's host-wide lock (src/core/state/lock.ts): through a Host double
 * (busy, then free; flock failing) and for real with flock(2) (two open file
 * descriptions of one file exclude each other, also within one process).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { acquireLock } from '../../src/core/state/lock.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { LOCK_EX, LOCK_NB } from '../../src/core/host/sys.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { systemHost } from '../../src/core/host/host.js';

/** A recording host whose lock is busy for the first `busy` tries. */
class BusyHost extends RecordingHost {
  constructor(private busy: number) {
    super();
  }
  override flock(fd: number, op: number): boolean {
    super.flock(fd, op);
    return this.busy-- <= 0;
  }
}

describe('acquireLock', () => {
  const dir = tempDir('cvmfs-thin-convert-lock-');

  it('takes LOCK_EX|LOCK_NB through the host, creating the file and its directory', async () => {
    const host = new RecordingHost();
    const file = path.join(dir, 'a', 'b', 'repo.lock');
    const l = await acquireLock(file, { host });
    expect(existsSync(file)).toBe(true);
    expect(host.ops('flock')).toHaveLength(1);
    expect(host.ops('flock')[0]!.args[1]).toBe(LOCK_EX | LOCK_NB);
    l.release();
    l.release();
  });

  it('polls while the lock is busy and calls onWait once', async () => {
    const host = new BusyHost(3);
    let waits = 0;
    const l = await acquireLock(path.join(dir, 'busy.lock'), { host, pollMs: 1, onWait: () => waits++ });
    expect(host.ops('flock')).toHaveLength(4);
    expect(waits).toBe(1);
    l.release();
  });

  it('gives up after timeoutMs with CVMFS_THIN_LOCK_TIMEOUT', async () => {
    const host = new BusyHost(Number.POSITIVE_INFINITY);
    const err = await acquireLock(path.join(dir, 'never.lock'), { host, pollMs: 1, timeoutMs: 5 }).catch((e: unknown) => e);
    expect(ThinError.is(err) && err.code).toBe('CVMFS_THIN_LOCK_TIMEOUT');
    expect((err as Error).message).toMatch(/never\.lock: still held by another process after 5 ms/);
  });

  it('reports a failing flock as CVMFS_THIN_LOCK naming the file', async () => {
    const host = new RecordingHost();
    host.failNext.set('flock', 'ENOLCK');
    const err = await acquireLock(path.join(dir, 'broken.lock'), { host }).catch((e: unknown) => e);
    expect(ThinError.is(err) && err.kind).toBe('unavailable');
    expect(ThinError.is(err) && err.code).toBe('CVMFS_THIN_LOCK');
    expect((err as Error).message).toMatch(/broken\.lock: flock failed: flock: ENOLCK/);
  });

  it('stops waiting when the signal aborts', async () => {
    const ctl = new AbortController();
    const p = acquireLock(path.join(dir, 'abort.lock'), {
      host: new BusyHost(Number.POSITIVE_INFINITY),
      pollMs: 1,
      signal: ctl.signal,
      onWait: () => ctl.abort(new Error('stop')),
    });
    await expect(p).rejects.toThrow('stop');
  });

  it('excludes a second holder for real (flock(2)) until the first releases', async () => {
    const file = path.join(dir, 'real.lock');
    const first = await acquireLock(file, { host: systemHost });
    await expect(acquireLock(file, { host: systemHost, pollMs: 1, timeoutMs: 20 })).rejects.toThrow(/still held/);
    let waited = false;
    const second = acquireLock(file, { host: systemHost, pollMs: 1, onWait: () => (waited = true) });
    await new Promise((r) => setTimeout(r, 10));
    first.release();
    (await second).release();
    expect(waited).toBe(true);
  });
});
