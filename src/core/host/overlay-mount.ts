/**
 * Mounting an overlay for systemHost (host.ts), without chdir and without the
 * one-page limit of mount(2)'s option string.
 *
 * Linux ≥ 6.8: the new mount API (fsopen("overlay") + one fsconfig
 * "lowerdir+" per lower layer + fsmount + move_mount). Each path is passed on
 * its own (absolute), so neither the 4 KiB page nor ':' / ',' in paths limit
 * anything; overlayfs's own 500-lower limit remains. The kernel's reason for a
 * refusal is read back from the fs context and put in the error.
 *
 * Older kernels: mount(2) with paths relative to `relativeTo` (short links
 * `l/<n>`), which needs the process's working directory there for the length
 * of the call (as moby's overlay2 does); the chdir stays inside this fallback
 * and is undone before returning. Node runs JavaScript on one thread, so
 * nothing else observes the changed directory.
 */
import { closeSync, readSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailedPreconditionError } from '../errors/errors.js';
import type { OverlayMount } from './host.js';
import { mount, rawSyscall, SyscallError } from './sys.js';

/** mount(2) copies one page of options, NUL included. */
export const MAX_MOUNT_DATA = 4095;

/** The option string of the overlay for mount(2) (paths as given). Pure. */
export function overlayMountData(o: OverlayMount): string {
  const opts = [...(o.options ?? [])];
  if (o.upper !== undefined) opts.push(`workdir=${o.work ?? ''}`, `upperdir=${o.upper}`);
  opts.push(`lowerdir=${o.lowers.join(':')}`);
  return opts.join(',');
}

/** Does this kernel take `lowerdir+` (Linux 6.8)? */
export function hasLowerdirAppend(release = os.release()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (!m) return false;
  const major = Number(m[1]);
  const minor = Number(m[2]);
  return major > 6 || (major === 6 && minor >= 8);
}

export function mountOverlay(o: OverlayMount): void {
  if (hasLowerdirAppend()) fsMountOverlay(o);
  else legacyMountOverlay(o);
}

/** mount(2) with relative paths (kernels before 6.8). */
export function legacyMountOverlay(o: OverlayMount): void {
  const data = overlayMountData(o);
  if (Buffer.byteLength(data) > MAX_MOUNT_DATA) {
    throw new FailedPreconditionError(
      `overlay options for ${o.target} are ${Buffer.byteLength(data)} bytes, more than one page (kernels before 6.8)`,
      'CVMFS_THIN_MOUNT',
    );
  }
  const target = path.resolve(o.target);
  const cwd = process.cwd();
  if (o.relativeTo) process.chdir(o.relativeTo);
  try {
    mount('overlay', target, 'overlay', 0, data);
  } finally {
    if (o.relativeTo) process.chdir(cwd);
  }
}

const SYS_MOVE_MOUNT = 429;
const SYS_FSOPEN = 430;
const SYS_FSCONFIG = 431;
const SYS_FSMOUNT = 432;
const FSOPEN_CLOEXEC = 1;
const FSMOUNT_CLOEXEC = 1;
const FSCONFIG_SET_FLAG = 0;
const FSCONFIG_SET_STRING = 1;
const FSCONFIG_CMD_CREATE = 6;
const AT_FDCWD = -100;
const MOVE_MOUNT_F_EMPTY_PATH = 4;

const libc = rawSyscall;

/** The messages the kernel left in an fs context ("e overlay: ..."), joined. */
function contextLog(fd: number): string {
  const out: string[] = [];
  const buf = Buffer.alloc(1024);
  for (let i = 0; i < 16; i++) {
    try {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) break;
      out.push(buf.subarray(0, n).toString('utf8').trim());
    } catch {
      break; // ENODATA: no more messages
    }
  }
  return out.join('; ');
}

/** The new mount API: one fsconfig per option and per lower layer. */
export function fsMountOverlay(o: OverlayMount): void {
  const l = libc();
  const abs = (p: string) => path.resolve(o.relativeTo ?? process.cwd(), p);
  const target = path.resolve(o.target);
  const fd = Number(l.syscall(SYS_FSOPEN, 'str', 'overlay', 'uint', FSOPEN_CLOEXEC));
  if (fd < 0) throw new SyscallError('fsopen', l.errno(), target);
  const fail = (call: string, errno: number, what: string): never => {
    const e = new SyscallError(call, errno, target);
    const why = contextLog(fd);
    e.message = `${e.message} (${what}${why ? `: ${why}` : ''})`;
    throw e;
  };
  const set = (key: string, value: string | null) => {
    const r =
      value === null
        ? Number(l.syscall(SYS_FSCONFIG, 'int', fd, 'uint', FSCONFIG_SET_FLAG, 'str', key, 'void *', null, 'int', 0))
        : Number(l.syscall(SYS_FSCONFIG, 'int', fd, 'uint', FSCONFIG_SET_STRING, 'str', key, 'str', value, 'int', 0));
    if (r < 0) fail('fsconfig', l.errno(), value === null ? key : `${key}=${value}`);
  };
  try {
    set('source', 'overlay');
    for (const opt of o.options ?? []) {
      const i = opt.indexOf('=');
      if (i < 0) set(opt, null);
      else set(opt.slice(0, i), opt.slice(i + 1));
    }
    for (const lower of o.lowers) set('lowerdir+', abs(lower));
    if (o.upper !== undefined) {
      set('upperdir', abs(o.upper));
      set('workdir', abs(o.work ?? ''));
    }
    if (Number(l.syscall(SYS_FSCONFIG, 'int', fd, 'uint', FSCONFIG_CMD_CREATE, 'void *', null, 'void *', null, 'int', 0)) < 0) {
      fail('fsconfig', l.errno(), `create with ${o.lowers.length} lower layers`);
    }
    const mfd = Number(l.syscall(SYS_FSMOUNT, 'int', fd, 'uint', FSMOUNT_CLOEXEC, 'uint', 0));
    if (mfd < 0) fail('fsmount', l.errno(), 'overlay');
    try {
      const r = Number(l.syscall(SYS_MOVE_MOUNT, 'int', mfd, 'str', '', 'int', AT_FDCWD, 'str', target, 'uint', MOVE_MOUNT_F_EMPTY_PATH));
      if (r < 0) fail('move_mount', l.errno(), target);
    } finally {
      closeSync(mfd);
    }
  } finally {
    closeSync(fd);
  }
}
