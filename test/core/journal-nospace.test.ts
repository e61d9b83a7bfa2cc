/**
 * The journal on a full file system (a small tmpfs, root): a commit that does
 * not fit fails its requests and runs no `durable` callback, nothing of it is
 * replayed after a reopen, the journal is not failed (no onFatal) and commits
 * again once space returns; compaction on a full disk is retried later.
 */
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Journal } from '../../src/core/state/journal.js';
import { mount, umount } from '../../src/core/host/sys.js';
import { fillFileSystem, needs, tempDir } from '../helpers/env.js';

interface Rec {
  k: string;
  v: string;
}

describe.skipIf(needs({ root: true })).each([false, true])('journal on a full disk (busy: %s)', (busy) => {
  const base = tempDir(`journal-nospace-${busy}-`);
  const fsDir = path.join(base, 'tmpfs');
  let mounted = false;
  beforeAll(() => {
    mkdirSync(fsDir, { recursive: true });
    mount('tmpfs', fsDir, 'tmpfs', 0, 'size=3m,mode=0700');
    mounted = true;
  });
  afterAll(() => {
    if (mounted) umount(fsDir, 2);
  });

  it('fails the requests that do not fit, replays none of them, and recovers when space returns', async () => {
    const dir = path.join(fsDir, 'j');
    const fatal: Error[] = [];
    const state = new Map<string, string>();
    const { journal } = await Journal.open<Rec>({ dir, name: 'kv', onFatal: (e) => fatal.push(e), compactAfterBytes: 1 << 30, busy: () => busy });
    const put = (k: string) => {
      const r = { k, v: 'x'.repeat(20_000) };
      return journal.append(r, () => state.set(r.k, r.v));
    };
    await put('first');
    // the next step is reserved ahead of need
    expect(statSync(path.join(dir, 'kv.journal')).size).toBeGreaterThanOrEqual(1 << 20);
    fillFileSystem(path.join(fsDir, 'filler'));
    const ok: string[] = [];
    let err: Error | undefined;
    for (let i = 0; i < 200 && !err; i++) {
      // a batch of three records per turn
      const rs = await Promise.allSettled([put(`a${i}`), put(`b${i}`), put(`c${i}`)]);
      for (const [j, r] of rs.entries()) {
        if (r.status === 'fulfilled') ok.push(`${'abc'[j]}${i}`);
        else err = r.reason as Error;
      }
    }
    expect(err?.message).toMatch(/no space left on the device; the change was not made/);
    expect((err as Error & { code: string }).code).toBe('CVMFS_THIN_IO_ENOSPC');
    expect(fatal).toEqual([]);
    expect([...state.keys()].sort()).toEqual(['first', ...ok].sort());
    await expect(put('still-full')).rejects.toThrow(/no space left/);
    expect(state.has('still-full')).toBe(false);

    rmSync(path.join(fsDir, 'filler'));
    await put('after');
    expect(state.has('after')).toBe(true);
    await journal.close();
    const again = await Journal.open<Rec>({ dir, name: 'kv', onFatal: (e) => fatal.push(e) });
    expect(again.records.map((r) => r.k).sort()).toEqual(['after', 'first', ...ok].sort());
    expect(again.discardedBytes).toBe(0);
    await again.journal.close();
    expect(fatal).toEqual([]);
  });

  it('a compaction that finds the disk full keeps the journal and tries again later', async () => {
    rmSync(path.join(fsDir, 'j'), { recursive: true, force: true }); // the first test's journal
    const dir = path.join(fsDir, 'c');
    const fatal: Error[] = [];
    const state = new Map<string, string>();
    const { journal } = await Journal.open<Rec>({ dir, name: 'kv', onFatal: (e) => fatal.push(e), compactAfterBytes: 64 << 10, busy: () => busy });
    journal.onSnapshot(() => Object.fromEntries(state));
    const put = (k: string, n = 10_000) => {
      const r = { k, v: 'y'.repeat(n) };
      return journal.append(r, () => state.set(r.k, r.v));
    };
    for (let i = 0; i < 5; i++) await put(`p${i}`);
    fillFileSystem(path.join(fsDir, 'filler'));
    // past the compaction threshold while full: the state file cannot be written
    for (let i = 5; i < 12; i++) await put(`p${i}`);
    expect(fatal).toEqual([]);
    expect(existsSync(path.join(dir, 'kv.state'))).toBe(false); // it could not compact
    expect(existsSync(path.join(dir, 'kv.state.tmp'))).toBe(false); // and left no temp file
    rmSync(path.join(fsDir, 'filler'));
    // space is back: the next commits compact
    for (let i = 12; i < 20; i++) await put(`p${i}`);
    expect(existsSync(path.join(dir, 'kv.state'))).toBe(true);
    await journal.close();
    const again = await Journal.open<Rec>({ dir, name: 'kv', onFatal: (e) => fatal.push(e) });
    const seen = new Map(Object.entries((again.state ?? {}) as Record<string, string>));
    for (const r of again.records) seen.set(r.k, r.v);
    expect([...seen.keys()].sort()).toEqual([...state.keys()].sort());
    await again.journal.close();
  });
});
