/**
 * The snapshotter's root on a full file system (a small tmpfs): a change that
 * cannot be made durable fails that request with ResourceExhausted and
 * changes nothing; the daemon keeps serving reads, does not exit, and works
 * again when space returns; a restart finds exactly the acknowledged changes.
 */
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mount, umount } from '../../src/core/host/sys.js';
import { type Daemon, startDaemon } from '../helpers/daemon.js';
import { fillFileSystem, needs, tempDir } from '../helpers/env.js';
import { grpcCode } from '../helpers/grpc.js';

describe.skipIf(needs({ root: true }))('snapshotter on a full disk', () => {
  const base = tempDir('sn-diskfull-');
  const fsDir = path.join(base, 'tmpfs');
  const root = path.join(fsDir, 'root');
  const repo = path.join(base, 'cvmfs', 'unpacked.cern.ch');
  const sock = path.join(base, 'diskfull.sock');
  const filler = path.join(fsDir, 'filler');
  let d: Daemon | undefined;
  let mounted = false;

  beforeAll(() => {
    mkdirSync(fsDir, { recursive: true });
    mkdirSync(repo, { recursive: true });
    mount('tmpfs', fsDir, 'tmpfs', 0, 'size=4m,mode=0755');
    mounted = true;
  });
  afterAll(async () => {
    await d?.stop('SIGKILL');
    if (mounted) umount(fsDir, 2 /* MNT_DETACH */);
  });

  it('fails the writes that do not fit with ENOSPC, keeps serving, recovers when space returns', async () => {
    d = await startDaemon(['--root', root, '--absolute-mountpoint', repo], sock);
    const c = d.client;
    await c.prepare('before');
    await c.commit('before-c', 'before');
    fillFileSystem(filler, 64 << 10);
    // 32 KiB of labels per snapshot: the journal's reserved space runs out after a few dozen
    const labels = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`l${i}`, 'x'.repeat(4000)]));
    const made: string[] = [];
    let failure: (Error & { code?: number }) | undefined;
    for (let i = 0; i < 400 && !failure; i++) {
      try {
        await c.prepare(`full-${i}`, '', labels);
        made.push(`full-${i}`);
      } catch (e) {
        failure = e as Error & { code?: number };
      }
    }
    expect(failure, 'a write failed once the disk was full').toBeDefined();
    expect(failure!.code).toBe(status.RESOURCE_EXHAUSTED); // containerd's errdefs.ErrResourceExhausted
    expect(failure!.message).toMatch(/metadata journal in .*: no space left on the device; the change was not made/);
    const failed = `full-${made.length}`;
    // nothing of the failed request is visible; the daemon is up and reads work
    expect(d.proc.exitCode).toBeNull();
    expect(await grpcCode(c.stat(failed)), d.output()).toBe(status.NOT_FOUND);
    expect((await c.stat('before-c')).name).toBe('before-c');
    const listed = (await c.list()).map((i) => i.name).sort();
    expect(listed).toEqual(['before-c', ...made].sort());
    // still full: still a per-request error, still up
    expect(await grpcCode(c.prepare('still-full', '', labels))).toBe(status.RESOURCE_EXHAUSTED);
    expect(d.proc.exitCode).toBeNull();

    // space returns: writes work again, without a restart
    rmSync(filler);
    await c.prepare(failed, '', labels);
    await c.remove('before-c').catch(() => undefined); // has no children: removable
    await c.commit('after-c', failed);
    const want = (await c.list()).map((i) => i.name).sort();
    expect(want).toContain('after-c');
    expect(want).not.toContain('before-c');

    // a restart finds exactly what was acknowledged
    expect(await d.stop()).toBe(0);
    d = await startDaemon(['--root', root, '--absolute-mountpoint', repo], sock);
    expect((await d.client.list()).map((i) => i.name).sort()).toEqual(want);
  });
});
