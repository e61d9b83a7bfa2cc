/**
 * extractLayerChunks (the hot layer's unpack of a pack as its pieces arrive):
 * a source that fills one small buffer again and again — headers, names and
 * contents cut anywhere — gives the tree and diffId extractLayerFile gives;
 * an unsafe entry is still refused; only inline.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { extractLayerChunks, extractLayerFile, packEntriesToBuffer } from '../../src/core/tar/index.js';
import { treeDiff, treeSnapshot } from '../helpers/cvmfs-sim/tree-diff.js';
import { tempDir } from '../helpers/env.js';

/** `buf` handed over `size` bytes at a time through one reused buffer. */
async function* reused(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  const b = Buffer.alloc(size);
  for (let at = 0; at < buf.length; at += size) {
    const n = buf.copy(b, 0, at, Math.min(buf.length, at + size));
    yield b.subarray(0, n);
    b.fill(0x55); // what a reader that refills the buffer leaves for whoever kept the old bytes
  }
}

describe('extractLayerChunks', () => {
  const tar = packEntriesToBuffer([
    { name: 'app/', mode: 0o750, mtime: 1_000_000 },
    ...Array.from({ length: 20 }, (_, i) => ({
      name: `app/${'long-name-'.repeat(i % 12)}f${i}`,
      data: Buffer.alloc(97 * i + 3, 65 + i),
      mtime: 2_000_000 + i,
    })),
    { name: 'etc/conf', data: 'x=1\n', mode: 0o600 },
  ]);

  it('a reused buffer cut anywhere gives the tree and the diffId of the whole file', async () => {
    const work = tempDir('extract-chunks-');
    const file = path.join(work, 'l.tar');
    fs.writeFileSync(file, tar);
    const want = path.join(work, 'want');
    fs.mkdirSync(want);
    const w = await extractLayerFile(file, { dest: want, whiteouts: 'overlay', thread: 'inline' });
    for (const size of [1, 100, 511, 512, 4096, tar.length]) {
      const got = path.join(work, `got${size}`);
      fs.mkdirSync(got);
      const r = await extractLayerChunks(reused(tar, size), { dest: got, whiteouts: 'overlay', thread: 'inline' });
      expect([r.files, r.diffId, r.bytes], `${size}-byte chunks`).toEqual([w.files, w.diffId, w.bytes]);
      expect(treeDiff(treeSnapshot(want), treeSnapshot(got)), `${size}-byte chunks`).toEqual([]);
    }
  });

  it('refuses a path out of its directory, and any thread but this one', async () => {
    const work = tempDir('extract-chunks-bad-');
    const dest = path.join(work, 'd');
    fs.mkdirSync(dest);
    const bad = packEntriesToBuffer([{ name: '../out', data: 'x' }]);
    await expect(extractLayerChunks(reused(bad, 100), { dest, whiteouts: 'overlay', thread: 'inline' })).rejects.toThrow(/\.\.\/out/);
    expect(fs.existsSync(path.join(work, 'out'))).toBe(false);
    await expect(extractLayerChunks(reused(tar, 100), { dest, whiteouts: 'overlay' })).rejects.toThrow("extractLayerChunks: only with thread: 'inline'");
  });
});
