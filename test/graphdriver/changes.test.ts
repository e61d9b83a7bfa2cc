/** Changes computation (docker diff) over in-memory trees; no root needed. */
import { mkdirSync, writeFileSync, linkSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { computeChanges, dirSize, type FileInfo, fsTree, lookupInStack, sameFsTime, type TreeReader } from '../../src/graphdriver/changes.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

type Node = { t: 'dir'; opaque?: boolean; mode?: number; mtime?: bigint; size?: bigint } | { t: 'file'; mode?: number } | { t: 'whiteout' } | { t: 'symlink' };

/** A tree from a flat map of relative paths; parent directories are implied (mode 0755, mtime 1 s). */
function tree(entries: Record<string, Node>): TreeReader {
  const all = new Map<string, Node>(Object.entries(entries));
  for (const p of Object.keys(entries)) {
    let d = path.posix.dirname(p);
    while (d !== '.') {
      if (!all.has(d)) all.set(d, { t: 'dir' });
      d = path.posix.dirname(d);
    }
  }
  const info = (n: Node): FileInfo => {
    if (n.t === 'dir') return { type: 'dir', mode: 0o40000 | (n.mode ?? 0o755), size: n.size ?? 4096n, mtimeNs: n.mtime ?? 1_000_000_000n, opaque: !!n.opaque };
    if (n.t === 'file') return { type: 'file', mode: 0o100000 | (n.mode ?? 0o644), size: 1n, mtimeNs: 5n, opaque: false };
    if (n.t === 'symlink') return { type: 'symlink', mode: 0o120777, size: 1n, mtimeNs: 5n, opaque: false };
    return { type: 'whiteout', mode: 0o20000, size: 0n, mtimeNs: 5n, opaque: false };
  };
  return {
    async lstat(rel) {
      if (rel === '') return { type: 'dir', mode: 0o40755, size: 4096n, mtimeNs: 0n, opaque: false };
      const n = all.get(rel);
      return n ? info(n) : null;
    },
    async readdir(rel) {
      const out: string[] = [];
      for (const p of all.keys()) if (path.posix.dirname(p) === (rel === '' ? '.' : rel)) out.push(path.posix.basename(p));
      return out;
    },
  };
}

const F: Node = { t: 'file' };

describe('lookup through the lower stack (what overlay would show)', () => {
  const top = tree({ 'etc/gone': { t: 'whiteout' }, opq: { t: 'dir', opaque: true }, 'opq/mine': F, filedir: F });
  const bottom = tree({ 'etc/gone': F, 'etc/kept': F, 'opq/hidden': F, 'filedir/under': F, 'deep/a/b': F });
  it('finds files in lower layers, nearest first', async () => {
    expect((await lookupInStack([top, bottom], 'etc/kept'))?.type).toBe('file');
    expect((await lookupInStack([top, bottom], 'opq/mine'))?.type).toBe('file');
    expect((await lookupInStack([top, bottom], 'deep/a/b'))?.type).toBe('file');
    expect(await lookupInStack([top, bottom], 'nothing')).toBeNull();
    expect(await lookupInStack([], 'etc')).toBeNull();
  });
  it('respects whiteouts, opaque directories and files replacing directories', async () => {
    expect(await lookupInStack([top, bottom], 'etc/gone')).toBeNull();
    expect(await lookupInStack([top, bottom], 'opq/hidden')).toBeNull();
    expect(await lookupInStack([top, bottom], 'filedir/under')).toBeNull();
    expect((await lookupInStack([bottom], 'opq/hidden'))?.type).toBe('file');
  });
});

describe('changes of a layer against its lowers (overlay2 semantics)', () => {
  it('reports adds, modifications and deletions, with the parent directory as modified', async () => {
    const lower = tree({ 'etc/passwd': F, 'etc/group': F, 'bin/sh': F, tmp: { t: 'dir' } });
    const upper = tree({ 'etc/passwd': F, 'etc/group': { t: 'whiteout' }, 'tmp/new': F, 'root/.ash_history': F });
    expect(await computeChanges(upper, [lower])).toEqual([
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/group', Kind: 2 },
      { Path: '/etc/passwd', Kind: 0 },
      { Path: '/root', Kind: 1 },
      { Path: '/root/.ash_history', Kind: 1 },
      { Path: '/tmp', Kind: 0 },
      { Path: '/tmp/new', Kind: 1 },
    ]);
  });
  it('leaves out a copied-up directory that did not change, but keeps one whose entries changed', async () => {
    const lower = tree({ 'a/x': F, 'b/y': F });
    const upper = tree({ 'a/x': F, b: { t: 'dir', mode: 0o700 } });
    // 'a' is identical (mode, size, mtime) and only holds a modified file: not an add or delete, so it is omitted
    expect(await computeChanges(upper, [lower])).toEqual([
      { Path: '/a/x', Kind: 0 },
      { Path: '/b', Kind: 0 },
    ]);
  });
  it('reports an opaque directory as deleted and its new content as added, like overlay2', async () => {
    const lower = tree({ 'data/old': F });
    const upper = tree({ data: { t: 'dir', opaque: true }, 'data/new': F });
    expect(await computeChanges(upper, [lower])).toEqual([
      { Path: '/data', Kind: 2 },
      { Path: '/data/new', Kind: 1 },
    ]);
  });
  it('treats everything as added when there is no lower layer', async () => {
    expect(await computeChanges(tree({ 'x/y': F, l: { t: 'symlink' } }), [])).toEqual([
      { Path: '/l', Kind: 1 },
      { Path: '/x', Kind: 1 },
      { Path: '/x/y', Kind: 1 },
    ]);
  });
  it('sees through a whited-out lower file when the file is created again (modification, not add)', async () => {
    const lower2 = tree({ f: F });
    const lower1 = tree({ f: { t: 'whiteout' } });
    // overlay shows nothing at /f below the container layer: recreating it is an add
    expect(await computeChanges(tree({ f: F }), [lower1, lower2])).toEqual([{ Path: '/f', Kind: 1 }]);
    expect(await computeChanges(tree({ f: F }), [lower2])).toEqual([{ Path: '/f', Kind: 0 }]);
  });
  it('compares times like Go sameFsTime', () => {
    expect(sameFsTime(1_500_000_000n, 1_500_000_000n)).toBe(true);
    expect(sameFsTime(1_000_000_000n, 1_500_000_000n)).toBe(true);
    expect(sameFsTime(1_200_000_000n, 1_500_000_000n)).toBe(false);
    expect(sameFsTime(1_000_000_000n, 2_000_000_000n)).toBe(false);
  });
});

describe('on a real directory', () => {
  const d = tempDir('gd-changes-');
  it('reads a directory tree and counts sizes like moby directory.Size', async () => {
    const lower = path.join(d, 'lower');
    const upper = path.join(d, 'upper');
    mkdirSync(path.join(lower, 'etc'), { recursive: true });
    writeFileSync(path.join(lower, 'etc', 'hosts'), 'x');
    mkdirSync(path.join(upper, 'etc'), { recursive: true });
    writeFileSync(path.join(upper, 'etc', 'hosts'), '12345');
    writeFileSync(path.join(upper, 'big'), Buffer.alloc(10_000));
    linkSync(path.join(upper, 'big'), path.join(upper, 'big-link'));
    symlinkSync('etc/hosts', path.join(upper, 'sym'));
    const host = new RecordingHost();
    const ch = await computeChanges(fsTree(upper, host), [fsTree(lower, host)]);
    expect(ch).toContainEqual({ Path: '/etc/hosts', Kind: 0 });
    expect(ch).toContainEqual({ Path: '/big', Kind: 1 });
    expect(ch).toContainEqual({ Path: '/sym', Kind: 1 });
    // 5 + 10000 (hard link once) + symlink length 9
    expect(await dirSize(upper)).toBe(5 + 10_000 + 9);
  });
});
