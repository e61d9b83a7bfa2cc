/**
 * Shared test environment checks. Tests that need root or a daemon binary run
 * for real in CI (as root, packages installed by .ci/run); for a developer
 * without them they skip and say why.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, lstatSync, mkdtempSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';

export const isRoot = process.getuid?.() === 0;

export function hasBinary(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Reason to skip, or null: use as `describe.skipIf(needs(...))`. Prints the reason once.
 * `root` may say what needs it (`'mknod of devices, chown to other uids'`): the reason names it.
 */
export function needs(opts: { root?: boolean | string; binaries?: string[] }): string | null {
  const missing: string[] = [];
  if (opts.root && !isRoot) missing.push(typeof opts.root === 'string' ? `root (${opts.root})` : 'root');
  for (const b of opts.binaries ?? []) if (!hasBinary(b)) missing.push(b);
  if (missing.length === 0) return null;
  const reason = `needs ${missing.join(', ')} (CI runs this as root with the packages installed by .ci/run)`;
  process.stderr.write(`[skip] ${reason}\n`);
  return reason;
}

/** A temporary directory removed after the test file. */
export function tempDir(prefix = 'cvmfs-thin-test-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  afterAll(() => removeAll(d));
  return d;
}

/** rm -rf, also of directories without write permission (layer roots are 0555, as podman's): unprivileged runs need it. */
export function removeAll(d: string): void {
  try {
    rmSync(d, { recursive: true, force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EACCES' && (e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
    const open = (p: string): void => {
      const st = lstatSync(p);
      if (!st.isDirectory()) return;
      chmodSync(p, 0o700);
      for (const n of readdirSync(p)) open(path.join(p, n));
    };
    open(d);
    rmSync(d, { recursive: true, force: true });
  }
}

/** Absolute path of the built CLI (tests run after `npm run build`). */
export const CLI = path.resolve(import.meta.dirname, '../../bin/cvmfs-thin.js');

/** Fill the file system holding `file` (appending to it) until ENOSPC, in `chunk`-byte writes. */
export function fillFileSystem(file: string, chunk = 16 << 10): void {
  const fd = openSync(file, 'a');
  const buf = Buffer.alloc(chunk, 1);
  try {
    for (;;) writeSync(fd, buf);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    closeSync(fd);
  }
}
