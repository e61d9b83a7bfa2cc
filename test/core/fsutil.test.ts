import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { removeTree, unlinkIfExists } from '../../src/core/fs/fsutil.js';
import { MS_BIND, mount, umount } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';

describe('removeTree', () => {
  const dir = tempDir('fsutil-');

  it('removes an empty directory, a full tree, a file; a missing path is fine', async () => {
    const empty = path.join(dir, 'empty');
    mkdirSync(empty);
    await removeTree(empty);
    expect(existsSync(empty)).toBe(false);

    const full = path.join(dir, 'full');
    mkdirSync(path.join(full, 'a/b'), { recursive: true });
    writeFileSync(path.join(full, 'a/b/f'), 'x');
    symlinkSync('/etc/passwd', path.join(full, 'a/link'));
    await removeTree(full);
    expect(existsSync(full)).toBe(false);
    expect(existsSync('/etc/passwd')).toBe(true);

    const file = path.join(dir, 'file');
    writeFileSync(file, 'x');
    await removeTree(file);
    expect(existsSync(file)).toBe(false);

    await expect(removeTree(path.join(dir, 'missing'))).resolves.toBeUndefined();
  });

  it('reads the mount table only when a directory is not empty', async () => {
    const unread = () => {
      throw new Error('mount table read for an empty directory');
    };
    mkdirSync(path.join(dir, 'e2'));
    await removeTree(path.join(dir, 'e2'), unread, { sync: false });
    expect(existsSync(path.join(dir, 'e2'))).toBe(false);
    mkdirSync(path.join(dir, 'f2/x'), { recursive: true });
    await expect(removeTree(path.join(dir, 'f2'), unread)).rejects.toThrow(/mount table read/);
    let reads = 0;
    await removeTree(path.join(dir, 'f2'), () => (reads++, []));
    expect([reads, existsSync(path.join(dir, 'f2'))]).toEqual([1, false]);
  });

  it('unlinkIfExists removes a symlink, not its target, and ignores a missing one', () => {
    const target = path.join(dir, 'target');
    mkdirSync(target);
    symlinkSync(target, path.join(dir, 'ln'));
    unlinkIfExists(path.join(dir, 'ln'));
    expect(existsSync(path.join(dir, 'ln'))).toBe(false);
    expect(existsSync(target)).toBe(true);
    expect(() => unlinkIfExists(path.join(dir, 'ln'))).not.toThrow();
  });

  describe.skipIf(needs({ root: true }))('with mounts (root)', () => {
    it('refuses to remove a tree with a mount below it and leaves the mounted content alone', async () => {
      const host = path.join(dir, 'host');
      mkdirSync(host);
      writeFileSync(path.join(host, 'precious'), 'keep me');
      const tree = path.join(dir, 'tree');
      mkdirSync(path.join(tree, 'sub/mnt'), { recursive: true });
      mount(host, path.join(tree, 'sub/mnt'), null, MS_BIND, null);
      try {
        await expect(removeTree(tree)).rejects.toThrow(/refusing to remove .*tree: 1 mount/);
        await expect(removeTree(path.join(tree, 'sub/mnt'))).rejects.toThrow(/refusing/);
      } finally {
        umount(path.join(tree, 'sub/mnt'));
      }
      expect(readFileSync(path.join(host, 'precious'), 'utf8')).toBe('keep me');
      await removeTree(tree);
      expect(existsSync(tree)).toBe(false);
    });

    it('refuses an empty directory that is itself a mount point (rmdir answers EBUSY), naming the mount', async () => {
      const src = path.join(dir, 'empty-src');
      const mp = path.join(dir, 'empty-mp');
      mkdirSync(src);
      mkdirSync(mp);
      mount(src, mp, null, MS_BIND, null);
      try {
        await expect(removeTree(mp, undefined, { sync: false })).rejects.toThrow(/refusing to remove .*empty-mp: 1 mount/);
        expect(existsSync(mp)).toBe(true);
      } finally {
        umount(mp);
      }
      await removeTree(mp);
      expect(existsSync(mp)).toBe(false);
    });
  });
});
