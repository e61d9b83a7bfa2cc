/** Small helpers of the converter: durations, command lines, sizes. Pure unless noted. */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../core/errors/errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };

/**
 * A duration like `30d`, `12h`, `1d12h`, `90m`, `45s`, `500ms`, `2w`, or `0`.
 * A bare number means days (DUCC's `--grace-period` is in days).
 */
export function parseDuration(s: string, what = 'duration'): number {
  const t = s.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * UNIT_MS['d']!);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(t)) !== null) {
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
    matched = re.lastIndex;
  }
  if (t === '' || matched !== t.length) {
    throw new InvalidArgumentError(`${what}: ${JSON.stringify(s)} is not a duration (examples: 30d, 12h, 1d12h, 90m, 0)`, 'CVMFS_THIN_BAD_FLAG');
  }
  return Math.round(total);
}

/**
 * Split a command line into argv the way a POSIX shell splits words, without
 * any expansion: single quotes, double quotes (with \" \\ \$ \` escapes) and
 * backslash escapes. Nothing is ever passed to a shell.
 */
export function splitCommand(s: string, what = 'command'): string[] {
  const out: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (c === "'") {
      const end = s.indexOf("'", i + 1);
      if (end < 0) throw new InvalidArgumentError(`${what}: unbalanced single quote in ${JSON.stringify(s)}`, 'CVMFS_THIN_BAD_FLAG');
      cur += s.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      for (;;) {
        if (i >= s.length) throw new InvalidArgumentError(`${what}: unbalanced double quote in ${JSON.stringify(s)}`, 'CVMFS_THIN_BAD_FLAG');
        const d = s[i]!;
        if (d === '"') break;
        if (d === '\\' && i + 1 < s.length && '"\\$`'.includes(s[i + 1]!)) {
          cur += s[i + 1];
          i += 2;
          continue;
        }
        cur += d;
        i++;
      }
      inWord = true;
      i++;
    } else if (c === '\\') {
      if (i + 1 >= s.length) throw new InvalidArgumentError(`${what}: trailing backslash in ${JSON.stringify(s)}`, 'CVMFS_THIN_BAD_FLAG');
      cur += s[i + 1];
      inWord = true;
      i += 2;
    } else if (c === ' ' || c === '\t' || c === '\n') {
      if (inWord) out.push(cur);
      cur = '';
      inWord = false;
      i++;
    } else {
      cur += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) out.push(cur);
  if (out.length === 0) throw new InvalidArgumentError(`${what}: empty command`, 'CVMFS_THIN_BAD_FLAG');
  return out;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

/** Is a process alive? (signal 0; EPERM means it exists but is not ours.) */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Short form of a digest for humans: `sha256:0123456789ab`. */
export function shortDigest(d: string): string {
  const i = d.indexOf(':');
  return i < 0 ? d.slice(0, 12) : d.slice(0, i + 13);
}

/** Every non-directory entry below `dir` (symlinks not followed), depth-limited; unreadable directories are skipped. */
export async function* walkFiles(dir: string, depth = 0): AsyncGenerator<{ path: string; isLink: boolean; name: string }> {
  if (depth > 24) return;
  let ents;
  try {
    ents = await fsp.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of ents) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* walkFiles(p, depth + 1);
    else yield { path: p, isLink: e.isSymbolicLink(), name: e.name };
  }
}
