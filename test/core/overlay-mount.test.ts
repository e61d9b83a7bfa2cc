/**
 * systemHost's overlay mounting (core/host/overlay-mount.ts): the new mount
 * API with one fsconfig per lower (no chdir, no one-page limit) and the
 * mount(2) fallback for kernels before 6.8.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { fsMountOverlay, hasLowerdirAppend, legacyMountOverlay, MAX_MOUNT_DATA, overlayMountData } from '../../src/core/host/overlay-mount.js';
import { umount } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';

describe('overlay mount data and kernel check (pure)', () => {
  it('builds mount(2) options in overlay order', () => {
    expect(overlayMountData({ target: '/t', lowers: ['l/1', 'l/2'], upper: 'u', work: 'w', options: ['index=off'] })).toBe(
      'index=off,workdir=w,upperdir=u,lowerdir=l/1:l/2',
    );
    expect(overlayMountData({ target: '/t', lowers: ['/a'] })).toBe('lowerdir=/a');
  });
  it('knows which kernels take lowerdir+', () => {
    expect(hasLowerdirAppend('6.8.0-generic')).toBe(true);
    expect(hasLowerdirAppend('6.18.44')).toBe(true);
    expect(hasLowerdirAppend('7.0')).toBe(true);
    expect(hasLowerdirAppend('6.7.12')).toBe(false);
    expect(hasLowerdirAppend('5.15.0')).toBe(false);
    expect(hasLowerdirAppend('nonsense')).toBe(false);
  });
});

describe.skipIf(needs({ root: true }) ?? (hasLowerdirAppend() ? null : 'needs Linux >= 6.8'))('overlay mounts for real (root)', () => {
  const dir = tempDir('ovl-');
  const targets: string[] = [];
  afterEach(() => {
    while (targets.length) umount(targets.pop()!);
  });
  const target = (name: string) => {
    const t = path.join(dir, name);
    mkdirSync(t, { recursive: true });
    targets.push(t);
    return t;
  };

  /** `n` lower dirs under long names, lower i holding file f<i>; "x" in the top one only. */
  function lowers(n: number, prefix: string): string[] {
    return Array.from({ length: n }, (_, i) => {
      const d = path.join(dir, prefix, `layer-with-a-long-name-${String(i).padStart(4, '0')}`);
      mkdirSync(d, { recursive: true });
      writeFileSync(path.join(d, `f${i}`), String(i));
      if (i === 0) writeFileSync(path.join(d, 'x'), 'top');
      return d;
    });
  }

  it('mounts 300 lowers whose options are far over one page, without chdir, read-write', () => {
    const ls = lowers(300, 'many');
    expect(Buffer.byteLength(ls.join(':'))).toBeGreaterThan(MAX_MOUNT_DATA);
    const up = path.join(dir, 'up');
    const work = path.join(dir, 'work');
    mkdirSync(up);
    mkdirSync(work);
    const t = target('m1');
    const cwd = process.cwd();
    fsMountOverlay({ target: t, lowers: ls, upper: up, work, options: ['index=off'] });
    expect(process.cwd()).toBe(cwd);
    expect(readMountinfo().find((m) => m.mountPoint === t)?.fsType).toBe('overlay');
    expect(readFileSync(path.join(t, 'f299'), 'utf8')).toBe('299');
    writeFileSync(path.join(t, 'new'), 'n');
    expect(readFileSync(path.join(up, 'new'), 'utf8')).toBe('n');
  });

  it('takes paths with ":" and "," (impossible in mount(2) options) and relative paths', () => {
    const odd = path.join(dir, 'odd:dir,name');
    mkdirSync(odd, { recursive: true });
    writeFileSync(path.join(odd, 'o'), 'odd');
    const [rel] = lowers(1, 'rel');
    const t = target('m2');
    fsMountOverlay({ target: t, lowers: [path.relative(dir, rel!), odd], relativeTo: dir });
    expect(readFileSync(path.join(t, 'o'), 'utf8')).toBe('odd');
    expect(readFileSync(path.join(t, 'x'), 'utf8')).toBe('top');
  });

  it("names the kernel's reason when it refuses", () => {
    const t = target('m3');
    targets.pop();
    expect(() => fsMountOverlay({ target: t, lowers: [path.join(dir, 'missing')] })).toThrow(/fsconfig .*ENOENT.*lowerdir\+=/);
  });

  it('the mount(2) fallback mounts relative to a directory and refuses options over one page', () => {
    const ls = lowers(2, 'legacy');
    const t = target('m4');
    const cwd = process.cwd();
    legacyMountOverlay({ target: t, lowers: ls.map((l) => path.relative(dir, l)), relativeTo: dir });
    expect(process.cwd()).toBe(cwd);
    expect(readFileSync(path.join(t, 'f1'), 'utf8')).toBe('1');
    const many = lowers(300, 'many2');
    const t2 = target('m5');
    targets.pop();
    expect(() => legacyMountOverlay({ target: t2, lowers: many })).toThrow(/more than one page/);
  });
});
