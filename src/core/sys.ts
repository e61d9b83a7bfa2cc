/**
 * The one seam for system calls Node does not offer: mknod (whiteouts,
 * devices), extended attributes, mount/umount. Loaded lazily through koffi so
 * that pure modules and unprivileged tests never touch libc.
 */
import koffi from 'koffi';

interface Libc {
  mknod: (path: string, mode: number, dev: bigint | number) => number;
  lsetxattr: (path: string, name: string, value: Buffer, size: number, flags: number) => number;
  lgetxattr: (path: string, name: string, value: Buffer | null, size: number) => number;
  llistxattr: (path: string, list: Buffer | null, size: number) => number;
  mount: (source: string | null, target: string, fstype: string | null, flags: number | bigint, data: string | null) => number;
  umount2: (target: string, flags: number) => number;
  lchown: (path: string, uid: number, gid: number) => number;
  errno: () => number;
}

let libc: Libc | undefined;

function lib(): Libc {
  if (libc) return libc;
  const l = koffi.load('libc.so.6');
  const errnoLoc = l.func('int *__errno_location(void)');
  libc = {
    mknod: l.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
    lsetxattr: l.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
    lgetxattr: l.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
    llistxattr: l.func('intptr_t llistxattr(const char *path, char *list, size_t size)'),
    mount: l.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    umount2: l.func('int umount2(const char *target, int flags)'),
    lchown: l.func('int lchown(const char *path, uint32_t uid, uint32_t gid)'),
    errno: () => koffi.decode(errnoLoc(), 'int') as number,
  };
  return libc;
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 7: 'E2BIG', 13: 'EACCES', 16: 'EBUSY', 17: 'EEXIST', 20: 'ENOTDIR', 21: 'EISDIR',
  22: 'EINVAL', 28: 'ENOSPC', 30: 'EROFS', 34: 'ERANGE', 36: 'ENAMETOOLONG', 40: 'ELOOP', 61: 'ENODATA', 95: 'EOPNOTSUPP',
};

/** An errno failure with Node-style `code` and `syscall`. */
export class SyscallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string;
  constructor(syscall: string, errno: number, path: string) {
    const code = ERRNO_NAMES[errno] ?? `E${errno}`;
    super(`${syscall} ${path}: ${code}`);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
  }
}

function check(rc: number, syscall: string, path: string): number {
  if (rc < 0) throw new SyscallError(syscall, lib().errno(), path);
  return rc;
}

export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;

/** glibc makedev. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

export function mknod(path: string, mode: number, major = 0, minor = 0): void {
  check(lib().mknod(path, mode, makedev(major, minor)), 'mknod', path);
}

/** An overlayfs whiteout: a character device 0/0. */
export function mkWhiteout(path: string): void {
  mknod(path, S_IFCHR | 0o000, 0, 0);
}

export function lsetxattr(path: string, name: string, value: Buffer | string): void {
  const b = typeof value === 'string' ? Buffer.from(value) : value;
  check(lib().lsetxattr(path, name, b, b.length, 0), 'lsetxattr', path);
}

/** Value of an xattr, or null if the file does not have it. */
export function lgetxattr(path: string, name: string): Buffer | null {
  const l = lib();
  for (;;) {
    const size = l.lgetxattr(path, name, null, 0);
    if (size < 0) {
      const e = l.errno();
      if (e === 61 /* ENODATA */ || e === 95 /* EOPNOTSUPP */) return null;
      throw new SyscallError('lgetxattr', e, path);
    }
    const buf = Buffer.alloc(size);
    const got = l.lgetxattr(path, name, buf, size);
    if (got < 0) {
      const e = l.errno();
      if (e === 34 /* ERANGE: grew meanwhile */) continue;
      if (e === 61) return null;
      throw new SyscallError('lgetxattr', e, path);
    }
    return buf.subarray(0, got);
  }
}

export function llistxattr(path: string): string[] {
  const l = lib();
  for (;;) {
    const size = l.llistxattr(path, null, 0);
    if (size < 0) {
      const e = l.errno();
      if (e === 95) return [];
      throw new SyscallError('llistxattr', e, path);
    }
    if (size === 0) return [];
    const buf = Buffer.alloc(size);
    const got = l.llistxattr(path, buf, size);
    if (got < 0) {
      if (l.errno() === 34) continue;
      throw new SyscallError('llistxattr', l.errno(), path);
    }
    return buf.subarray(0, got).toString('latin1').split('\0').filter((s) => s.length > 0);
  }
}

export function lchown(path: string, uid: number, gid: number): void {
  check(lib().lchown(path, uid, gid), 'lchown', path);
}

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_REMOUNT = 32;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_PRIVATE = 1 << 18;
export const MNT_DETACH = 2;

export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
  check(lib().mount(source, target, fstype, flags, data), 'mount', target);
}

export function umount(target: string, flags = 0): void {
  check(lib().umount2(target, flags), 'umount2', target);
}
