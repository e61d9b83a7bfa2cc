/**
 * The Host contract: the same assertions against the simulated host
 * (test/helpers/recording-host.ts, which every unprivileged test of the
 * daemons relies on) and the real one (src/core/host/host.ts `systemHost`,
 * root: real tmpfs, bind and overlay mounts in a temp dir), so that the
 * simulated mount table cannot drift from the kernel's. Everything happens
 * on a private tmpfs mounted on a fresh directory, as listed by the host's
 * own mount-table reader.
 *
 * Not in the contract: exec/execStreaming/probeFs (the simulation runs
 * test-given programs), mountinfo outside the test's directory, the opens a
 * watch reports (another process opens a file: `cat` for the real host, a
 * reported open for the simulated one; the watch itself is in it).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, lstatSync, mkdirSync, openSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FS_MAGIC, type Host, type MountInfo, systemHost } from '../../src/core/host/host.js';
import { OpenWatchError } from '../../src/core/host/open-watch.js';
import {
  LOCK_EX,
  LOCK_NB,
  LOCK_SH,
  LOCK_UN,
  MNT_DETACH,
  MS_BIND,
  MS_PRIVATE,
  MS_RDONLY,
  MS_REC,
  MS_REMOUNT,
  MS_SHARED,
  MS_SLAVE,
} from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

interface Subject {
  host: Host;
  /** What mknod made at `p`: a device (type and numbers), or null. */
  node(p: string): { type: 'chr' | 'blk' | 'fifo'; major: number; minor: number } | null;
  /** The owner lchown gave `p`. */
  owner(p: string): { uid: number; gid: number };
  /** Another process opens `p` for reading. */
  openElsewhere(p: string): void;
}

const real = (): Subject => ({
  host: systemHost,
  node(p) {
    const st = lstatSync(p, { bigint: true });
    const type = st.isCharacterDevice() ? 'chr' : st.isBlockDevice() ? 'blk' : st.isFIFO() ? 'fifo' : null;
    if (!type) return null;
    return { type, major: Number((st.rdev >> 8n) & 0xfffn), minor: Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn)) };
  },
  owner(p) {
    const st = lstatSync(p);
    return { uid: st.uid, gid: st.gid };
  },
  openElsewhere: (p) => execFileSync('cat', [p], { stdio: 'ignore' }),
});

const simulated = (): Subject => {
  const host = new RecordingHost();
  return {
    host,
    node(p) {
      const n = host.nodes.get(path.resolve(p));
      if (!n) return null;
      const t = n.mode & 0o170000;
      return { type: t === 0o020000 ? 'chr' : t === 0o060000 ? 'blk' : 'fifo', major: n.major, minor: n.minor };
    },
    owner: (p) => host.owners.get(path.resolve(p)) ?? { uid: -1, gid: -1 },
    openElsewhere: (p) => host.opened(p, { pid: process.pid + 1 }),
  };
};

/** The error code a call fails with. */
function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

/** The overlay's lower directories in its super options, top first (`lowerdir+=` each, or `lowerdir=a:b` on older kernels). */
function lowersOf(superOptions: string): string[] {
  const opts = superOptions.split(',');
  const legacy = opts.find((o) => o.startsWith('lowerdir='));
  if (legacy) return legacy.slice('lowerdir='.length).split(':');
  return opts.filter((o) => o.startsWith('lowerdir+=')).map((o) => o.slice('lowerdir+='.length));
}

function hostContract(name: string, make: () => Subject): void {
  describe(name, () => {
    const tmp = tempDir('cvmfs-thin-host-contract-');
    let n = 0;
    let s: Subject;
    let host: Host;
    let base: string;
    /** Mounts at or below the test's directory, in mount order, mount points relative to it. */
    const table = (): (MountInfo & { at: string })[] =>
      host
        .mountinfo()
        .filter((m) => m.mountPoint === base || m.mountPoint.startsWith(`${base}/`))
        .map((m) => ({ ...m, at: path.relative(base, m.mountPoint) || '.' }));
    const at = (rel: string): MountInfo | undefined => table().findLast((m) => m.at === rel);
    const flags = (rel: string): string[] => at(rel)?.options.split(',') ?? [];
    const dir = (rel: string): string => {
      const d = path.join(base, rel);
      mkdirSync(d, { recursive: true });
      return d;
    };
    const tmpfs = (rel: string, f = 0): string => {
      const d = dir(rel);
      host.mount(`contract-${rel.replaceAll('/', '-')}`, d, 'tmpfs', f, 'mode=0755');
      return d;
    };

    beforeEach(() => {
      s = make();
      host = s.host;
      base = path.join(tmp, `t${n++}`);
      mkdirSync(base);
      host.mount('contract', base, 'tmpfs', 0, 'mode=0755');
      host.mount('', base, null, MS_PRIVATE, null);
    });
    afterEach(() => {
      host.umount(base, MNT_DETACH);
    });

    describe('mount and umount', () => {
      it('lists a tmpfs at its mount point, read-write or read-only, with its statfs magic; umount removes it', () => {
        const a = tmpfs('a');
        const b = tmpfs('b', MS_RDONLY);
        expect(at('a')).toMatchObject({ fsType: 'tmpfs', source: 'contract-a', root: '/', propagation: 'private' });
        expect(flags('a')[0]).toBe('rw');
        expect(flags('b')[0]).toBe('ro');
        expect(host.statfsType(a)).toBe(FS_MAGIC.TMPFS);
        host.umount(b);
        host.umount(a);
        expect(table().map((m) => m.at)).toEqual(['.']);
      });

      it('fails with ENOENT for a missing target, EINVAL for a directory that is no mount point, EBUSY for a mount with one on it', () => {
        expect(codeOf(() => host.mount('x', path.join(base, 'missing'), 'tmpfs', 0, null))).toBe('ENOENT');
        expect(codeOf(() => host.umount(path.join(base, 'missing')))).toBe('ENOENT');
        expect(codeOf(() => host.umount(dir('plain')))).toBe('EINVAL');
        expect(codeOf(() => host.statfsType(path.join(base, 'missing')))).toBe('ENOENT');
        const outer = tmpfs('outer');
        tmpfs('outer/inner');
        expect(codeOf(() => host.umount(outer))).toBe('EBUSY');
        expect(table().map((m) => m.at)).toEqual(['.', 'outer', 'outer/inner']);
        host.umount(outer, MNT_DETACH);
        expect(table().map((m) => m.at)).toEqual(['.']);
      });

      it('umount takes the topmost of stacked mounts', () => {
        const d = tmpfs('d');
        host.mount('second', d, 'tmpfs', MS_RDONLY, null);
        expect(at('d')).toMatchObject({ source: 'second' });
        host.umount(d);
        expect(at('d')).toMatchObject({ source: 'contract-d' });
        expect(flags('d')[0]).toBe('rw');
      });
    });

    describe('bind', () => {
      it('a bind is the source file system (type, source, root below it), not a file system of its own', () => {
        dir('src/sub');
        host.bind(path.join(base, 'src/sub'), dir('dst'));
        expect(at('dst')).toMatchObject({ fsType: 'tmpfs', source: 'contract', root: '/src/sub' });
        expect(flags('dst')[0]).toBe('rw');
        tmpfs('t');
        dir('t/x');
        host.bind(path.join(base, 't/x'), dir('dst2'));
        expect(at('dst2')).toMatchObject({ fsType: 'tmpfs', source: 'contract-t', root: '/x' });
      });

      it('fails with ENOENT for a missing source or target', () => {
        expect(codeOf(() => host.bind(path.join(base, 'nope'), dir('dst')))).toBe('ENOENT');
        expect(codeOf(() => host.bind(dir('src'), path.join(base, 'nope')))).toBe('ENOENT');
        expect(table().map((m) => m.at)).toEqual(['.']);
      });

      it('read-only: ro, nosuid, nodev; a remount turns a bind read-only, EINVAL where nothing is mounted', () => {
        host.bind(dir('src'), dir('ro'), { readonly: true });
        expect(flags('ro')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
        host.bind(dir('src'), dir('rw'));
        expect(flags('rw')[0]).toBe('rw');
        host.mount('', path.join(base, 'rw'), null, MS_BIND | MS_REMOUNT | MS_RDONLY, null);
        expect(flags('rw')[0]).toBe('ro');
        expect(codeOf(() => host.mount('', dir('plain'), null, MS_BIND | MS_REMOUNT | MS_RDONLY, null))).toBe('EINVAL');
      });

      it('rbind takes the mounts below the source along, bind does not; a read-only rbind is read-only throughout', () => {
        const src = dir('src');
        tmpfs('src/inner');
        host.bind(src, dir('plain'));
        host.bind(src, dir('rec'), { recursive: true });
        host.bind(src, dir('recro'), { recursive: true, readonly: true });
        expect(table().map((m) => m.at)).toEqual(['.', 'src/inner', 'plain', 'rec', 'rec/inner', 'recro', 'recro/inner']);
        expect(at('rec/inner')).toMatchObject({ fsType: 'tmpfs', source: 'contract-src-inner', root: '/' });
        expect(flags('recro')[0]).toBe('ro');
        expect(flags('recro/inner')[0]).toBe('ro');
        host.umount(path.join(base, 'rec'), MNT_DETACH);
        expect(table().map((m) => m.at)).toEqual(['.', 'src/inner', 'plain', 'recro', 'recro/inner']);
      });
    });

    describe('propagation', () => {
      it('shared, slave, private as listed; EINVAL where nothing is mounted', () => {
        const p = tmpfs('p');
        expect(at('p')?.propagation).toBe('private');
        host.mount('', p, null, MS_SHARED, null);
        expect(at('p')?.propagation).toBe('shared');
        host.mount('', p, null, MS_PRIVATE, null);
        expect(at('p')?.propagation).toBe('private');
        expect(codeOf(() => host.mount('', dir('plain'), null, MS_SHARED, null))).toBe('EINVAL');
      });

      it('a mount under a shared parent is shared, a bind of a shared mount is its peer, a slave of a peer group with others is a slave, alone it is private', () => {
        const sh = tmpfs('sh');
        host.mount('', sh, null, MS_SHARED, null);
        tmpfs('sh/child');
        expect(at('sh/child')?.propagation).toBe('shared');
        host.bind(sh, dir('peer'));
        expect(at('peer')?.propagation).toBe('shared');
        host.mount('', path.join(base, 'peer'), null, MS_SLAVE, null);
        expect(at('peer')?.propagation).toBe('slave');
        // sh's peer group has no other member now: slave means private
        host.mount('', sh, null, MS_SLAVE, null);
        expect(at('sh')?.propagation).toBe('private');
        const lone = tmpfs('lone');
        host.mount('', lone, null, MS_SLAVE, null);
        expect(at('lone')?.propagation).toBe('private');
      });

      it('MS_REC changes the mounts below too; a read-only rbind with rslave of a shared tree is a slave tree', () => {
        const top = tmpfs('top');
        tmpfs('top/a');
        host.mount('', top, null, MS_SHARED | MS_REC, null);
        expect([at('top')?.propagation, at('top/a')?.propagation]).toEqual(['shared', 'shared']);
        host.bind(top, dir('view'), { recursive: true, readonly: true, propagation: 'rslave' });
        expect([at('view')?.propagation, at('view/a')?.propagation]).toEqual(['slave', 'slave']);
        expect([flags('view')[0], flags('view/a')[0]]).toEqual(['ro', 'ro']);
        host.mount('', top, null, MS_PRIVATE | MS_REC, null);
        expect([at('top')?.propagation, at('top/a')?.propagation]).toEqual(['private', 'private']);
      });
    });

    describe('overlay', () => {
      it('lists the lowers top first, upper and work dirs and the options; statfs says overlay', () => {
        const [l1, l2, up, wk] = ['l1', 'l2', 'up', 'wk'].map(dir) as [string, string, string, string];
        const m = dir('merged');
        host.mountOverlay({ target: m, lowers: [l1, l2], upper: up, work: wk, options: ['index=off'] });
        const o = at('merged')!;
        expect(o).toMatchObject({ fsType: 'overlay', source: 'overlay', root: '/' });
        const sup = o.superOptions!.split(',');
        expect(sup[0]).toBe('rw');
        expect(lowersOf(o.superOptions!)).toEqual([l1, l2]);
        expect(sup).toEqual(expect.arrayContaining([`upperdir=${up}`, `workdir=${wk}`]));
        // options are listed when they are not the kernel's default (index=off usually is)
        expect(sup).not.toContain('index=on');
        expect(host.statfsType(m)).toBe(FS_MAGIC.OVERLAY);
        host.umount(m);
      });

      it('without an upper dir the overlay is read-only and needs two lowers; short links relative to a directory; ENOENT for a missing lower', () => {
        const ls = [dir('layers/2'), dir('layers/1')];
        const m = dir('ro');
        host.mountOverlay({ target: m, lowers: ['layers/2', 'layers/1'], relativeTo: base });
        expect(at('ro')!.superOptions!.split(',')[0]).toBe('ro');
        expect(lowersOf(at('ro')!.superOptions!).map((x) => path.resolve(base, x))).toEqual(ls);
        expect(codeOf(() => host.mountOverlay({ target: dir('one'), lowers: [ls[0]!] }))).toBe('EINVAL');
        expect(codeOf(() => host.mountOverlay({ target: dir('bad'), lowers: [ls[0]!, path.join(base, 'missing')] }))).toBe('ENOENT');
        expect(at('one')).toBeUndefined();
        expect(at('bad')).toBeUndefined();
      });
    });

    describe('device nodes, whiteouts, owners, times', () => {
      it('mknod and mkWhiteout make the node; EEXIST when the path exists, ENOENT without the parent', () => {
        const w = path.join(dir('d'), 'gone');
        s.host.mkWhiteout(w);
        expect(s.node(w)).toEqual({ type: 'chr', major: 0, minor: 0 });
        s.host.mknod(path.join(base, 'd', 'null'), 0o020666, 1, 3);
        expect(s.node(path.join(base, 'd', 'null'))).toEqual({ type: 'chr', major: 1, minor: 3 });
        s.host.mknod(path.join(base, 'd', 'fifo'), 0o010644);
        expect(s.node(path.join(base, 'd', 'fifo'))).toMatchObject({ type: 'fifo' });
        expect(codeOf(() => s.host.mkWhiteout(w))).toBe('EEXIST');
        expect(codeOf(() => s.host.mkWhiteout(path.join(base, 'no', 'parent')))).toBe('ENOENT');
      });

      it('lchown sets the owner of the link itself; ENOENT for a missing path', () => {
        const f = path.join(dir('o'), 'f');
        writeFileSync(f, '');
        host.lchown(f, 1234, 5678);
        expect(s.owner(f)).toEqual({ uid: 1234, gid: 5678 });
        expect(codeOf(() => host.lchown(path.join(base, 'missing'), 0, 0))).toBe('ENOENT');
      });

      it('lutimesNs sets the times (to the microsecond at least)', () => {
        const f = path.join(dir('u'), 'f');
        writeFileSync(f, '');
        host.lutimesNs(f, 1_000_000_000, 250_000_000, 1_500_000_000, 500_000_000);
        const st = lstatSync(f);
        expect(st.mtimeMs).toBe(1_500_000_000_500);
        expect(st.atimeMs).toBe(1_000_000_000_250);
      });
    });

    describe('xattrs', () => {
      it('set, get and list; null for an unset name; ENOENT for a missing path, EOPNOTSUPP for an unknown namespace', () => {
        const d = dir('x');
        host.lsetxattr(d, 'trusted.overlay.opaque', 'y');
        host.lsetxattr(d, 'user.note', Buffer.from([0, 1, 2]));
        expect(host.lgetxattr(d, 'trusted.overlay.opaque')?.toString()).toBe('y');
        expect(host.lgetxattr(d, 'user.note')).toEqual(Buffer.from([0, 1, 2]));
        expect(host.llistxattr(d)).toEqual(expect.arrayContaining(['trusted.overlay.opaque', 'user.note']));
        expect(host.lgetxattr(d, 'user.unset')).toBeNull();
        const missing = path.join(base, 'missing');
        expect(codeOf(() => host.lsetxattr(missing, 'user.a', 'b'))).toBe('ENOENT');
        expect(codeOf(() => host.lgetxattr(missing, 'user.a'))).toBe('ENOENT');
        expect(codeOf(() => host.llistxattr(missing))).toBe('ENOENT');
        expect(codeOf(() => host.lsetxattr(d, 'bogus.a', 'b'))).toBe('EOPNOTSUPP');
      });
    });

    describe('flock', () => {
      it('open file descriptions of one file exclude each other; shared locks share; unlock or close lets go', () => {
        const f = path.join(dir('l'), 'lock');
        writeFileSync(f, '');
        const [a, b, c] = [openSync(f, 'r'), openSync(f, 'r'), openSync(f, 'r')];
        try {
          expect(host.flock(a, LOCK_EX | LOCK_NB)).toBe(true);
          expect(host.flock(a, LOCK_EX | LOCK_NB)).toBe(true);
          expect(host.flock(b, LOCK_EX | LOCK_NB)).toBe(false);
          expect(host.flock(b, LOCK_SH | LOCK_NB)).toBe(false);
          host.flock(a, LOCK_UN);
          expect(host.flock(b, LOCK_SH | LOCK_NB)).toBe(true);
          expect(host.flock(c, LOCK_SH | LOCK_NB)).toBe(true);
          expect(host.flock(a, LOCK_EX | LOCK_NB)).toBe(false);
          closeSync(b);
          closeSync(c);
          expect(host.flock(a, LOCK_EX | LOCK_NB)).toBe(true);
        } finally {
          for (const fd of [a, b, c]) {
            try {
              closeSync(fd);
            } catch {
              /* closed above */
            }
          }
        }
      });
    });

    describe('flock on a kept descriptor', () => {
      it('a lock taken before the file gets its name follows it through the rename and holds until its descriptor closes', () => {
        const d = dir('k');
        const fd = openSync(path.join(d, 'tmp'), 'wx');
        let other: number | undefined;
        try {
          expect(host.flock(fd, LOCK_EX | LOCK_NB)).toBe(true);
          renameSync(path.join(d, 'tmp'), path.join(d, 'owner'));
          other = openSync(path.join(d, 'owner'), 'r');
          expect(host.flock(other, LOCK_EX | LOCK_NB)).toBe(false);
          closeSync(fd);
          expect(host.flock(other, LOCK_EX | LOCK_NB)).toBe(true);
        } finally {
          for (const x of [fd, other]) {
            try {
              if (x !== undefined) closeSync(x);
            } catch {
              /* closed above */
            }
          }
        }
      });
    });

    describe('watching opens', () => {
      it("reports another process's opens on the watched mount only, with the path and the regular file's identity; unmounting is seen", () => {
        const mp = tmpfs('w');
        const f = path.join(mp, 'f');
        writeFileSync(f, 'hello');
        const outside = path.join(dir('plain'), 'g');
        writeFileSync(outside, 'x');
        const w = host.watchOpens(mp);
        try {
          expect(w.read()).toBeNull();
          s.openElsewhere(f);
          s.openElsewhere(outside);
          const r = w.read();
          const st = lstatSync(f, { bigint: true });
          expect(r?.lost).toBe(0);
          expect(r?.events.filter((e) => e.pid !== process.pid)).toEqual([
            { pid: expect.any(Number), exec: false, link: f, file: { ino: st.ino, dev: st.dev, size: 5 } },
          ]);
          expect(w.read()).toBeNull();
          expect(w.mounted()).toBe(true);
          host.umount(mp);
          expect(w.mounted()).toBe(false);
        } finally {
          w.close();
        }
      });

      it('an OpenWatchError for a missing path (ENOENT) and for a directory that is no mount point', () => {
        const fail = (p: string) => {
          try {
            host.watchOpens(p).close();
          } catch (e) {
            return e instanceof OpenWatchError ? { why: e.why, code: e.code } : e;
          }
          return 'watched';
        };
        expect(fail(path.join(base, 'missing'))).toEqual({ why: 'cannot open it', code: 'ENOENT' });
        expect(fail(dir('plain'))).toEqual({ why: 'not a mount point', code: undefined });
      });
    });

    it('an idmapped bind is a bind of the source file system; its user namespace closes', async () => {
      const src = tmpfs('idsrc');
      const u = await host.createUserns([{ containerId: 0, hostId: 100000, size: 65536 }], [{ containerId: 0, hostId: 100000, size: 65536 }]);
      try {
        host.idmappedBindMount(src, dir('idmapped'), u.fd);
      } finally {
        u.close();
        u.close();
      }
      expect(at('idmapped')).toMatchObject({ fsType: 'tmpfs', source: 'contract-idsrc', root: '/' });
    });
  });
}

hostContract('the simulated host (test/helpers/recording-host.ts)', simulated);

const unprivileged = needs({ root: true });
describe.skipIf(unprivileged)(`the real host (systemHost)${unprivileged ? ` — skipped: ${unprivileged}` : ''}`, () => {
  hostContract('real mounts in a temp dir', real);
});
