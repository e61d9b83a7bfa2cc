/**
 * The snapshotter's semantics with real directories and real overlay mounts:
 * thin images, remote layers, whiteout handling, cleanup, restart. Needs root.
 */
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { chainDir, duccChainIds } from '../../src/core/cvmfs/layout.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import type { Mount } from '../../src/core/stack/mounts.js';
import { MS_BIND, mount, umount } from '../../src/core/host/sys.js';
import { LABEL_LAYER_DIGEST, LABEL_SNAPSHOT_REF, Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, type FakeLayer, thinJson, writeTree } from '../helpers/cvmfs-tree.js';
import { needs, tempDir } from '../helpers/env.js';
import { mountAll, unmountAll } from '../helpers/mount.js';

const REPO = 'unpacked.cern.ch';

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (ThinError.is(e)) return e.kind;
    throw e;
  }
  return 'ok';
}

describe.skipIf(needs({ root: true }))('snapshotter semantics (root, real overlay mounts)', () => {
  const base = tempDir('sn-');
  let n = 0;
  let dir: string;
  let repoRoot: string;
  let sn: Snapshotter;
  const mounted: string[] = [];

  const open = () =>
    Snapshotter.open({
      root: path.join(dir, 'root'),
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }),
      host: systemHost,
      log: silentLogger(),
    });

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    repoRoot = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repoRoot, { recursive: true });
    sn = await open();
  });
  afterEach(async () => {
    while (mounted.length) unmountAll(mounted.pop()!);
    await sn.close();
  });

  /** Mount `ms` on a fresh directory and return it (unmounted after the test). */
  function at(ms: Mount[]): string {
    const t = path.join(dir, `mnt${mounted.length}`);
    mkdirSync(t, { recursive: true });
    mountAll(ms, t);
    mounted.push(t);
    return t;
  }

  /** Commit a parentless layer holding only `thin.json` = text. */
  async function thinImage(name: string, text: string): Promise<void> {
    const ms = await sn.prepare(`${name}-extract`, '', {});
    const t = at(ms);
    writeFileSync(path.join(t, 'thin.json'), text);
    unmountAll(mounted.pop()!);
    await sn.commit(name, `${name}-extract`, {});
  }

  function layers(): { conv: FakeLayer; ducc: FakeLayer; top: FakeLayer } {
    // base: written by cvmfs-thin convert (overlay whiteouts + marker)
    const conv = addLayer(
      repoRoot,
      'conv',
      { 'bin/tool': 'tool', 'etc/passwd': 'root:x:0:0', 'etc/shadow': 'secret', 'opt/old/a': 'a', 'var/cache/x': 'x' },
      { converter: true },
    );
    // middle: DUCC style: OCI whiteouts kept as plain files
    const ducc = addLayer(repoRoot, 'ducc', { 'etc/.wh.shadow': '', 'opt/old/.wh..wh..opq': '', 'opt/old/b': 'b', 'data/ducc.txt': 'from ducc' });
    // top: converter style, deletes var/cache with an overlay whiteout
    const top = addLayer(repoRoot, 'top', { 'var/cache': { whiteout: true }, 'top.txt': 'top' }, { converter: true });
    return { conv, ducc, top };
  }

  it('mounts a thin image from CVMFS: files from every layer, deletions honoured, thin.json and .wh.* invisible', async () => {
    const { conv, ducc, top } = layers();
    await thinImage('thin', thinJson(REPO, [conv, ducc, top]));
    const root = at(await sn.prepare('ctr', 'thin', {}));
    expect(readFileSync(path.join(root, 'bin/tool'), 'utf8')).toBe('tool');
    expect(readFileSync(path.join(root, 'data/ducc.txt'), 'utf8')).toBe('from ducc');
    expect(readFileSync(path.join(root, 'top.txt'), 'utf8')).toBe('top');
    expect(existsSync(path.join(root, 'thin.json'))).toBe(false);
    expect(existsSync(path.join(root, 'etc/shadow'))).toBe(false); // deleted by a DUCC .wh. file
    expect(readdirSync(path.join(root, 'opt/old'))).toEqual(['b']); // opaque dir: a/ hidden
    expect(existsSync(path.join(root, 'var/cache'))).toBe(false); // deleted by an overlay whiteout
    expect(readdirSync(path.join(root, 'etc')).sort()).toEqual(['passwd']); // no .wh.shadow
    // the container writes to its own upper dir only
    writeFileSync(path.join(root, 'bin/tool'), 'changed');
    expect(readFileSync(path.join(conv.dir, 'bin/tool'), 'utf8')).toBe('tool');
    // a read-only view of the thin image sees the same tree
    const v = at(await sn.view('v', 'thin', {}));
    expect(readFileSync(path.join(v, 'bin/tool'), 'utf8')).toBe('tool');
    expect(existsSync(path.join(v, 'etc/shadow'))).toBe(false);
  });

  it('stacks ordinary layers above a thin image (docker commit on top)', async () => {
    const { conv } = layers();
    await thinImage('thin', thinJson(REPO, [conv]));
    const t = at(await sn.prepare('up-extract', 'thin', {}));
    writeFileSync(path.join(t, 'added.txt'), 'local');
    unmountAll(mounted.pop()!);
    await sn.commit('up', 'up-extract', {});
    const root = at(await sn.prepare('ctr', 'up', {}));
    expect(readFileSync(path.join(root, 'added.txt'), 'utf8')).toBe('local');
    expect(readFileSync(path.join(root, 'bin/tool'), 'utf8')).toBe('tool');
  });

  it('prefers a DUCC .chains directory for the whole stack', async () => {
    const { conv, ducc } = layers();
    const chain = chainDir(repoRoot, duccChainIds([conv.hex, ducc.hex]).at(-1)!);
    writeTree(chain, { 'from-chain': 'yes', 'bin/tool': 'chain tool' });
    await thinImage('thin', thinJson(REPO, [conv, ducc]));
    const root = at(await sn.prepare('ctr', 'thin', {}));
    expect(readFileSync(path.join(root, 'from-chain'), 'utf8')).toBe('yes');
    expect(existsSync(path.join(root, 'data/ducc.txt'))).toBe(false);
    // a dirty chain is not used
    writeTree(path.join(repoRoot, '.dirty-chains'), { [path.basename(chain)]: '' });
    await thinImage('thin2', thinJson(REPO, [conv, ducc], { comment: 'again' }));
    const root2 = at(await sn.prepare('ctr2', 'thin2', {}));
    expect(existsSync(path.join(root2, 'from-chain'))).toBe(false);
    expect(readFileSync(path.join(root2, 'data/ducc.txt'), 'utf8')).toBe('from ducc');
  });

  it('keeps an ordinary layer that merely contains a thin.json among other files', async () => {
    const ms = await sn.prepare('x', '', {});
    const t = at(ms);
    writeFileSync(path.join(t, 'thin.json'), 'not a manifest');
    writeFileSync(path.join(t, 'other'), 'o');
    unmountAll(mounted.pop()!);
    await sn.commit('plain', 'x', {});
    const root = at(await sn.prepare('c', 'plain', {}));
    expect(readFileSync(path.join(root, 'thin.json'), 'utf8')).toBe('not a manifest');
  });

  it('refuses a bad thin manifest at Commit with an error naming the field, leaving the active snapshot intact', async () => {
    const { conv } = layers();
    const bad = JSON.parse(thinJson(REPO, [conv])) as { layers: { url: string }[] };
    bad.layers[0]!.url = 'cvmfs://evil.example.org/.layers/x';
    let e: unknown;
    const ms = await sn.prepare('bad-extract', '', {});
    writeFileSync(path.join(at(ms), 'thin.json'), JSON.stringify(bad));
    unmountAll(mounted.pop()!);
    try {
      await sn.commit('bad', 'bad-extract', {});
    } catch (err) {
      e = err;
    }
    expect(ThinError.is(e) && e.kind).toBe('invalid-argument');
    expect((e as Error).message).toMatch(/layers\[0\]\.url: repository "evil\.example\.org" is not allowed/);
    expect(sn.stat('bad-extract').kind).toBe('active');
    expect(await code(Promise.resolve().then(() => sn.stat('bad')))).toBe('not-found');
  });

  it('refuses a thin manifest whose layer is not in CVMFS, or escapes it through a symlink', async () => {
    const { conv } = layers();
    const missing = { ...conv, hex: 'f'.repeat(64) };
    await expect(thinImage('m', thinJson(REPO, [conv, missing]))).rejects.toThrow(
      /layers\[1\]\.url: layer cvmfs:\/\/unpacked\.cern\.ch\/\.layers\/ff\/f+\/layerfs does not exist/,
    );
    const escape = addLayer(repoRoot, 'escape', {});
    const outside = path.join(dir, 'outside');
    mkdirSync(outside);
    const { rmSync, symlinkSync } = await import('node:fs');
    rmSync(escape.dir, { recursive: true });
    symlinkSync(outside, escape.dir);
    await expect(thinImage('e', thinJson(REPO, [escape]))).rejects.toThrow(/outside repository/);
  });

  it('serves 500 thin layers (the overlay limit) through short links', async () => {
    const many = Array.from({ length: 500 }, (_, i) => addLayer(repoRoot, `l${i}`, { [`f${i}`]: String(i) }, { converter: true }));
    await thinImage('big', thinJson(REPO, many));
    const root = at(await sn.prepare('ctr', 'big', {}));
    expect(readFileSync(path.join(root, 'f0'), 'utf8')).toBe('0');
    expect(readFileSync(path.join(root, 'f499'), 'utf8')).toBe('499');
  }, 120_000);

  describe('remote layers (CRI labels)', () => {
    const labels = (chain: string, l: FakeLayer | string) => ({
      [LABEL_SNAPSHOT_REF]: chain,
      [LABEL_LAYER_DIGEST]: typeof l === 'string' ? l : l.digest,
      'containerd.io/snapshot/cri.image-ref': 'example/image:1',
    });

    it('commits present layers as remote snapshots (AlreadyExists), falls back for missing ones, reuses on a second pull', async () => {
      const { conv, ducc } = layers();
      expect(await code(sn.prepare('k1', '', labels('sha256:c1', conv)))).toBe('already-exists');
      expect(await code(Promise.resolve().then(() => sn.stat('k1')))).toBe('not-found');
      const r1 = sn.list((i) => i.labels[LABEL_SNAPSHOT_REF] === 'sha256:c1');
      expect(r1.map((i) => [i.name, i.kind, i.parent])).toEqual([['sha256:c1', 'committed', '']]);
      expect(await code(sn.prepare('k2', 'sha256:c1', labels('sha256:c2', ducc)))).toBe('already-exists');
      // missing layer: normal active snapshot
      const ms = await sn.prepare('k3', 'sha256:c2', labels('sha256:c3', `sha256:${'e'.repeat(64)}`));
      writeFileSync(path.join(at(ms), 'three'), '3');
      unmountAll(mounted.pop()!);
      await sn.commit('n3', 'k3', {});
      const root = at(await sn.prepare('ctr', 'n3', {}));
      expect(readFileSync(path.join(root, 'bin/tool'), 'utf8')).toBe('tool');
      expect(readFileSync(path.join(root, 'three'), 'utf8')).toBe('3');
      expect(existsSync(path.join(root, 'etc/shadow'))).toBe(false); // DUCC .wh. honoured on the remote path too
      expect(existsSync(path.join(root, 'etc/.wh.shadow'))).toBe(false);
      // same image from another namespace: AlreadyExists again, still one snapshot
      expect(await code(sn.prepare('other-ns k1', '', labels('sha256:c1', conv)))).toBe('already-exists');
      expect(sn.list((i) => i.labels[LABEL_SNAPSHOT_REF] === 'sha256:c1')).toHaveLength(1);
      expect((await sn.usage('sha256:c1')).size).toBe(0);
    });

    it('serves a layer remotely again after it was removed (no "already mounted" memory)', async () => {
      const { conv } = layers();
      expect(await code(sn.prepare('k1', '', labels('sha256:c1', conv)))).toBe('already-exists');
      await sn.remove('sha256:c1');
      await sn.cleanup();
      expect(existsSync(path.join(conv.dir, 'bin/tool'))).toBe(true); // CVMFS untouched
      expect(await code(sn.prepare('k1', '', labels('sha256:c1', conv)))).toBe('already-exists');
    });

    it('falls back to a normal layer for malformed or missing digest labels', async () => {
      expect(await code(sn.prepare('a', '', { [LABEL_SNAPSHOT_REF]: 'sha256:x', [LABEL_LAYER_DIGEST]: 'nonsense' }))).toBe('ok');
      expect(await code(sn.prepare('b', '', { [LABEL_SNAPSHOT_REF]: 'sha256:y' }))).toBe('ok');
      expect(await code(sn.prepare('c', '', { [LABEL_SNAPSHOT_REF]: 'sha256:z', [LABEL_LAYER_DIGEST]: 'sha256:../../etc' }))).toBe('ok');
    });
  });

  it('Cleanup removes orphaned data but never deletes through a mount point', async () => {
    await sn.prepare('a', '', {});
    const orphan = path.join(dir, 'root', 'snapshots', '9999');
    mkdirSync(path.join(orphan, 'fs'), { recursive: true });
    const victim = path.join(dir, 'victim');
    writeTree(victim, { precious: 'data' });
    const orphan2 = path.join(dir, 'root', 'snapshots', '9998', 'fs');
    mkdirSync(orphan2, { recursive: true });
    mount(victim, orphan2, null, MS_BIND, null);
    try {
      await sn.cleanup();
      expect(existsSync(orphan)).toBe(false);
      expect(readFileSync(path.join(victim, 'precious'), 'utf8')).toBe('data');
      expect(existsSync(orphan2)).toBe(true);
    } finally {
      umount(orphan2);
    }
    await sn.cleanup();
    expect(existsSync(orphan2)).toBe(false);
    expect(readFileSync(path.join(victim, 'precious'), 'utf8')).toBe('data');
    expect(sn.stat('a').kind).toBe('active');
  });

  it('keeps everything across a restart and recreates lost short links', async () => {
    const { conv } = layers();
    await thinImage('thin', thinJson(REPO, [conv]));
    await sn.prepare('ctr', 'thin', { k: 'v' });
    const before = sn.list(() => true);
    await sn.close();
    const links = path.join(dir, 'root', 'l');
    for (const l of readdirSync(links)) if (readlinkSync(path.join(links, l)).startsWith(repoRoot)) (await import('node:fs')).rmSync(path.join(links, l));
    sn = await open();
    expect(sn.list(() => true)).toEqual(before);
    const root = at(await sn.mounts('ctr'));
    expect(readFileSync(path.join(root, 'bin/tool'), 'utf8')).toBe('tool');
  });

  it('answers Unavailable when a CVMFS layer disappears, instead of a failed mount', async () => {
    const { conv } = layers();
    await thinImage('thin', thinJson(REPO, [conv]));
    await sn.prepare('ctr', 'thin', {});
    (await import('node:fs')).renameSync(conv.dir, `${conv.dir}.gone`);
    expect(await code(sn.mounts('ctr'))).toBe('unavailable');
    (await import('node:fs')).renameSync(`${conv.dir}.gone`, conv.dir);
    expect(await code(sn.mounts('ctr'))).toBe('ok');
  });

  it('never leaves state behind after a failed Prepare or Commit', async () => {
    expect(await code(sn.prepare('x', 'nope', {}))).toBe('not-found');
    expect(await code(sn.prepare('', '', {}))).toBe('invalid-argument');
    expect(await code(sn.prepare('big', '', { k: 'v'.repeat(5000) }))).toBe('invalid-argument');
    expect(sn.list(() => true)).toEqual([]);
    expect(readdirSync(path.join(dir, 'root', 'snapshots'))).toEqual([]);
    expect(lstatSync(path.join(dir, 'root', 'l')).isDirectory()).toBe(true);
    expect(readdirSync(path.join(dir, 'root', 'l'))).toEqual([]);
  });
});
