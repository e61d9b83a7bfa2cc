/**
 * The access recorder (core/stack/access-recorder.ts): the fanotify event
 * parser (host/open-watch.ts) and path normalisation with crafted input, the
 * recorder over the simulated host's watch (any user), then, as root
 * (skipped otherwise, saying so), a real overlay and a container-like process
 * (`unshare -m` + rbind of the overlay + `chroot` into it, running the
 * static busybox): the files it opens are recorded once each, in order, with
 * sizes and exec flags; each stop reason; no fd left open; the typed error
 * when fanotify cannot watch (not a mount, missing path, no CAP_SYS_ADMIN).
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/core/errors/errors.js';
import { systemHost } from '../../src/core/host/host.js';
import { parseFanotifyEvents } from '../../src/core/host/open-watch.js';
import { containerPath, NoAccessRecordingError, recordAccesses as recordWith } from '../../src/core/stack/access-recorder.js';
import { mknod, mount, S_IFCHR, umount } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The recorder with the real host (the root tests: real overlays, real containers). */
const recordAccesses = (mp: string, o: Parameters<typeof recordWith>[2]) => recordWith(systemHost, mp, o);

/** One fanotify_event_metadata record (vers 3), `extra` bytes of info records after it. */
function event(mask: number, fd: number, pid: number, extra = 0, le = true): Buffer {
  const b = Buffer.alloc(24 + extra);
  const w32 = (v: number, o: number) => (le ? b.writeUInt32LE(v >>> 0, o) : b.writeUInt32BE(v >>> 0, o));
  w32(24 + extra, 0);
  b[4] = 3;
  if (le) {
    b.writeUInt16LE(24, 6);
    b.writeBigUInt64LE(BigInt(mask), 8);
  } else {
    b.writeUInt16BE(24, 6);
    b.writeBigUInt64BE(BigInt(mask), 8);
  }
  w32(fd, 16);
  w32(pid, 20);
  return b;
}

describe('fanotify event parsing (pure)', () => {
  it('parses several events of one read, info records skipped, the overflow event kept', () => {
    const buf = Buffer.concat([event(0x20, 7, 100), event(0x1020, 8, 101, 16), event(0x4000, -1, 0), event(0x20 + 2 ** 40, 9, 102)]);
    expect(parseFanotifyEvents(buf)).toEqual({
      events: [
        { mask: 0x20, fd: 7, pid: 100 },
        { mask: 0x1020, fd: 8, pid: 101 },
        { mask: 0x4000, fd: -1, pid: 0 },
        { mask: 0x20 + 2 ** 40, fd: 9, pid: 102 },
      ],
      leftover: 0,
    });
  });

  it('reads only `len` bytes of the buffer; a truncated tail and a malformed record are leftover', () => {
    const two = Buffer.concat([event(0x20, 3, 1), event(0x20, 4, 2)]);
    const big = Buffer.concat([two, Buffer.alloc(100)]);
    expect(parseFanotifyEvents(big, two.length)).toEqual({
      events: [
        { mask: 0x20, fd: 3, pid: 1 },
        { mask: 0x20, fd: 4, pid: 2 },
      ],
      leftover: 0,
    });
    expect(parseFanotifyEvents(big, two.length + 10).leftover).toBe(10);
    expect(parseFanotifyEvents(two, 30)).toEqual({ events: [{ mask: 0x20, fd: 3, pid: 1 }], leftover: 6 });
    const bad = event(0x20, 5, 1);
    bad.writeUInt32LE(8, 0); // event_len < metadata
    expect(parseFanotifyEvents(Buffer.concat([event(0x20, 3, 1), bad]))).toEqual({ events: [{ mask: 0x20, fd: 3, pid: 1 }], leftover: 24 });
    const v2 = event(0x20, 5, 1);
    v2[4] = 2; // unknown version
    expect(parseFanotifyEvents(v2)).toEqual({ events: [], leftover: 24 });
    // declared longer than what was read: returned (its fd is open and must be closed)
    expect(parseFanotifyEvents(event(0x20, 6, 1, 40), 30)).toEqual({ events: [{ mask: 0x20, fd: 6, pid: 1 }], leftover: 0 });
    expect(parseFanotifyEvents(Buffer.alloc(0))).toEqual({ events: [], leftover: 0 });
  });

  it('big-endian records', () => {
    const buf = Buffer.concat([event(0x1020, 11, 12, 0, false), event(0x4000, -1, 0, 0, false)]);
    expect(parseFanotifyEvents(buf, buf.length, false).events).toEqual([
      { mask: 0x1020, fd: 11, pid: 12 },
      { mask: 0x4000, fd: -1, pid: 0 },
    ]);
  });

  it('paths: the host mount point stripped, normalised; /proc, /sys, /dev, deleted and non-path links dropped', () => {
    const mp = '/run/c/rootfs';
    expect(containerPath('/run/c/rootfs/etc/hosts', mp)).toBe('/etc/hosts');
    expect(containerPath('/bin/sh', mp)).toBe('/bin/sh');
    expect(containerPath('/run/c/rootfsx/a', mp)).toBe('/run/c/rootfsx/a');
    expect(containerPath('//usr/./lib//x.so', mp)).toBe('/usr/lib/x.so');
    for (const l of ['/proc/1/status', '/sys/fs/x', '/dev/null', '/run/c/rootfs/dev/pts/0', '/tmp/gone (deleted)', 'anon_inode:[eventfd]', 'pipe:[12]']) {
      expect(containerPath(l, mp), l).toBeUndefined();
    }
  });

  it('bad options are refused before anything is opened', async () => {
    const host = new RecordingHost();
    await expect(recordWith(host, '/nonexistent', { windowMs: 100, maxFiles: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(recordWith(host, '/nonexistent', { windowMs: NaN, maxFiles: 5 })).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(host.ops('watchOpens')).toEqual([]);
  });
});

describe("the recorder over the simulated host's watch (any user)", () => {
  const base = tempDir('cvmfs-thin-access-sim-');
  let n = 0;

  /** A simulated mount on a real directory holding /bin/sh (100 bytes), /a (6), /b (7), /dir/c (3000). */
  function mounted(host: RecordingHost): string {
    const mp = path.join(base, String(n++));
    fs.mkdirSync(path.join(mp, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(mp, 'dir'));
    fs.writeFileSync(path.join(mp, 'bin/sh'), 'x'.repeat(100));
    fs.writeFileSync(path.join(mp, 'a'), 'hello\n');
    fs.writeFileSync(path.join(mp, 'b'), 'worlds\n');
    fs.writeFileSync(path.join(mp, 'dir/c'), 'c'.repeat(3000));
    host.mount('overlay', mp, 'overlay', 0, null);
    return mp;
  }

  it('each regular file once, in order, exec from any of its opens; own opens, directories and lost events not recorded; the watch closed', async () => {
    const host = new RecordingHost();
    const mp = mounted(host);
    const rec = recordWith(host, mp, { windowMs: 20_000, idleMs: 300, maxFiles: 100, pollMs: 5 });
    await sleep(20);
    host.opened(path.join(mp, 'bin/sh'), { pid: 2, exec: true });
    host.opened(path.join(mp, 'a'), { pid: process.pid }); // ours: not the container's
    host.opened(path.join(mp, 'a'), { pid: 2 });
    host.opened(path.join(mp, 'dir'), { pid: 2 });
    host.opened(path.join(mp, 'dir/c'), { pid: 3 });
    host.opened(path.join(mp, 'a'), { pid: 3, exec: true });
    host.opened(path.join(mp, 'b'), { pid: 2, lost: 2 });
    const r = await rec;
    expect(r.reason).toBe('idle');
    expect(r.files.map((f) => [f.path, f.size, f.exec])).toEqual([
      ['/bin/sh', 100, true],
      ['/a', 6, true],
      ['/dir/c', 3000, false],
    ]);
    expect([r.events, r.dropped]).toEqual([6, 2]);
    expect(host.ops('watchOpens').map((c) => c.args)).toEqual([[mp]]);
    expect(host.watches.map((w) => w.closed)).toEqual([true]);
  });

  it('stops at maxFiles and when the mount goes; the typed error when the host cannot watch', async () => {
    const host = new RecordingHost();
    const mp = mounted(host);
    const capped = recordWith(host, mp, { windowMs: 20_000, maxFiles: 2, pollMs: 5 });
    for (const f of ['a', 'b', 'dir/c']) host.opened(path.join(mp, f), { pid: 2 });
    expect(await capped).toMatchObject({ reason: 'max-files', files: [{ path: '/a' }, { path: '/b' }] });

    const t = performance.now();
    const gone = recordWith(host, mp, { windowMs: 20_000, maxFiles: 10 });
    await sleep(50);
    host.umount(mp);
    expect((await gone).reason).toBe('unmounted');
    expect(performance.now() - t).toBeLessThan(2000);

    const plain = path.join(base, 'plain');
    fs.mkdirSync(plain, { recursive: true });
    await expect(recordWith(host, plain, { windowMs: 100, maxFiles: 5 })).rejects.toMatchObject({
      code: 'CVMFS_THIN_NO_ACCESS_RECORDING',
      errno: undefined,
      message: `cannot record file opens on ${plain}: not a mount point`,
    });
    const mp2 = mounted(host);
    host.failNext.set('watchOpens', 'EPERM');
    const e = await recordWith(host, mp2, { windowMs: 100, maxFiles: 5 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NoAccessRecordingError);
    expect(e).toMatchObject({ errno: 'EPERM', message: `cannot record file opens on ${mp2}: fanotify_init: EPERM` });
    expect(host.watches.every((w) => w.closed)).toBe(true);
  });
});

const fdCount = () => fs.readdirSync('/proc/self/fd').length;

describe.skipIf(needs({ root: true, binaries: ['busybox', 'unshare', 'chroot', 'setpriv'] }))(
  'recording a container-like process on a real overlay (root)',
  () => {
    const base = tempDir('cvmfs-thin-access-');
    let n = 0;
    let mounted: string | undefined;

    afterEach(() => {
      if (mounted && fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mounted} `)) umount(mounted);
      mounted = undefined;
    });

    /** An overlay whose lower holds /bin/busybox, /a (6 bytes), /b (7), /dir/c (3000), /etc/hosts, a device /null. */
    function overlay(): string {
      const d = path.join(base, String(n++));
      for (const s of ['lower/bin', 'lower/dir', 'lower/etc', 'upper', 'work', 'merged']) fs.mkdirSync(path.join(d, s), { recursive: true });
      fs.copyFileSync('/bin/busybox', path.join(d, 'lower/bin/busybox'));
      fs.chmodSync(path.join(d, 'lower/bin/busybox'), 0o755);
      fs.writeFileSync(path.join(d, 'lower/a'), 'hello\n');
      fs.writeFileSync(path.join(d, 'lower/b'), 'worlds\n');
      fs.writeFileSync(path.join(d, 'lower/dir/c'), 'c'.repeat(3000));
      fs.writeFileSync(path.join(d, 'lower/etc/hosts'), '127.0.0.1 localhost\n');
      mknod(path.join(d, 'lower/null'), S_IFCHR | 0o666, 1, 3);
      const merged = path.join(d, 'merged');
      mount('overlay', merged, 'overlay', 0, `lowerdir=${d}/lower,upperdir=${d}/upper,workdir=${d}/work`);
      mounted = merged;
      return merged;
    }

    /** What runc does, roughly: a private mount namespace, the rootfs rbind-mounted on itself, chroot into it. */
    const container = (mp: string, script: string) =>
      run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount --rbind ${mp} ${mp} && exec chroot ${mp} /bin/busybox sh -c '${script}'`]);

    it('records the files opened inside (and by the host before), each once, in order, regular files only, with sizes and exec', async () => {
      const mp = overlay();
      const before = fdCount();
      const rec = recordAccesses(mp, { windowMs: 20_000, idleMs: 800, maxFiles: 100 });
      await sleep(50);
      await run('cat', [path.join(mp, 'etc/hosts')]); // runc-like: through the host's mount, before the chroot
      await container(mp, 'busybox cat /a; busybox cat /b; busybox cat /a /dir/c; echo x > /null; busybox ls /dir; echo new > /made; busybox cat /made');
      const r = await rec;
      expect(r.reason).toBe('idle');
      expect(r.files.map((f) => [f.path, f.size, f.exec])).toEqual([
        ['/etc/hosts', 20, false],
        ['/bin/busybox', fs.statSync('/bin/busybox').size, true],
        ['/a', 6, false],
        ['/b', 7, false],
        ['/dir/c', 3000, false],
        ['/made', 4, false], // written by the container (upper layer): the prefetcher skips what CVMFS does not hold
      ]);
      const at = r.files.map((f) => f.atMs);
      expect(at).toEqual([...at].sort((x, y) => x - y));
      expect(r.events).toBeGreaterThanOrEqual(8); // repeated opens and the device counted as events
      expect(r.dropped).toBe(0);
      expect(fdCount()).toBe(before);
    });

    it('stops after the window, after idleness, at maxFiles, on abort (also given aborted), when the overlay is unmounted', async () => {
      const mp = overlay();
      const before = fdCount();
      let t = performance.now();
      let r = await recordAccesses(mp, { windowMs: 300, maxFiles: 10 });
      expect([r.reason, r.files]).toEqual(['window', []]);
      expect(performance.now() - t).toBeGreaterThanOrEqual(290);

      t = performance.now();
      r = await recordAccesses(mp, { windowMs: 10_000, idleMs: 300, maxFiles: 10 });
      expect(r.reason).toBe('idle');
      expect(performance.now() - t).toBeLessThan(2000);

      const capped = recordAccesses(mp, { windowMs: 10_000, maxFiles: 2, pollMs: 5 });
      await container(mp, 'busybox cat /a /b /dir/c /etc/hosts');
      r = await capped;
      expect([r.reason, r.files.map((f) => f.path)]).toEqual(['max-files', ['/bin/busybox', '/a']]);

      const ac = new AbortController();
      const aborted = recordAccesses(mp, { windowMs: 10_000, maxFiles: 10, signal: ac.signal });
      setTimeout(() => ac.abort(), 100);
      expect((await aborted).reason).toBe('aborted');
      expect((await recordAccesses(mp, { windowMs: 10_000, maxFiles: 10, signal: AbortSignal.abort() })).reason).toBe('aborted');

      t = performance.now();
      const gone = recordAccesses(mp, { windowMs: 20_000, maxFiles: 10 });
      await sleep(100);
      umount(mp);
      expect((await gone).reason).toBe('unmounted');
      expect(performance.now() - t).toBeLessThan(2000);
      expect(fdCount()).toBe(before);
    });

    it('many opens: several reads, every event fd closed; a queue overflow (16384 events unread) is counted as dropped', async () => {
      const mp = overlay();
      const before = fdCount();
      let rec = recordAccesses(mp, { windowMs: 20_000, idleMs: 1000, maxFiles: 1000 });
      await container(mp, 'for i in $(busybox seq 1 300); do echo $i > /f$i; busybox cat /f$i /a /b > /made; done');
      let r = await rec;
      expect(r.files.length).toBeGreaterThanOrEqual(300);
      expect(r.events).toBeGreaterThan(900); // more than one 256-event read
      expect(new Set(r.files.map((f) => f.path)).size).toBe(r.files.length);
      expect(r.dropped).toBe(0);

      const many = path.join(mp, 'many');
      fs.mkdirSync(many);
      for (let i = 0; i < 17_000; i++) fs.writeFileSync(path.join(many, String(i)), '');
      rec = recordAccesses(mp, { windowMs: 20_000, idleMs: 1000, maxFiles: 20_000 });
      await sleep(50);
      execFileSync('unshare', [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount --rbind ${mp} ${mp} && exec chroot ${mp} /bin/busybox sh -c 'busybox cat /many/*'`,
      ]); // blocks: nothing is read meanwhile
      r = await rec;
      expect(r.dropped).toBeGreaterThanOrEqual(1);
      expect(r.files.length).toBeGreaterThan(16_000);
      expect(r.files.length).toBeLessThan(17_001);
      expect(fdCount()).toBe(before);
    });

    it('a typed error when fanotify cannot watch: missing path, not a mount point, no CAP_SYS_ADMIN', async () => {
      const before = fdCount();
      const missing = path.join(base, 'nope');
      const e1 = await recordAccesses(missing, { windowMs: 100, maxFiles: 5 }).catch((e: unknown) => e);
      expect(e1).toBeInstanceOf(NoAccessRecordingError);
      expect(e1).toMatchObject({ code: 'CVMFS_THIN_NO_ACCESS_RECORDING', kind: 'failed-precondition', errno: 'ENOENT', mountpoint: missing });
      expect((e1 as Error).message).toContain(missing);

      const e2 = await recordAccesses(base, { windowMs: 100, maxFiles: 5 }).catch((e: unknown) => e);
      expect(e2).toMatchObject({ code: 'CVMFS_THIN_NO_ACCESS_RECORDING', errno: undefined, message: `cannot record file opens on ${base}: not a mount point` });
      expect(fdCount()).toBe(before);

      const mp = overlay();
      const mod = path.resolve(import.meta.dirname, '../../src/core/stack/access-recorder.ts');
      const hostMod = path.resolve(import.meta.dirname, '../../src/core/host/host.ts');
      const script = `const { recordAccesses } = await import(${JSON.stringify(mod)}); const { systemHost } = await import(${JSON.stringify(hostMod)});
      try { await recordAccesses(systemHost, ${JSON.stringify(mp)}, { windowMs: 100, maxFiles: 5 }); console.log('{}'); }
      catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, errno: e.errno, message: e.message })); }`;
      const { stdout } = await run('setpriv', [
        '--bounding-set=-sys_admin',
        '--inh-caps=-sys_admin',
        process.execPath,
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        script,
      ]);
      expect(JSON.parse(stdout)).toEqual({
        name: 'NoAccessRecordingError',
        code: 'CVMFS_THIN_NO_ACCESS_RECORDING',
        errno: 'EPERM',
        message: `cannot record file opens on ${mp}: fanotify_init: EPERM`,
      });
    });
  },
);
