/**
 * `.chains` directories through CvmfsLayers and a real overlay: the root's
 * catalog marker never visible; for DUCC's chains (layers without our
 * marker), the setuid/setgid/sticky bits its chain writer drops restored from
 * the layers' own modes, with the chain's owners, content and times — and
 * nothing restored that a higher layer replaced or deleted.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { chainDir, duccChainIds } from '../../src/core/cvmfs/layout.js';
import { addLayer, type Entry, type FakeLayer, writeTree } from '../helpers/cvmfs-tree.js';
import { needs } from '../helpers/env.js';
import { layerStackFixture } from '../helpers/layer-stack.js';

const fixture = layerStackFixture('cvmfs-thin-chains-');

function setup() {
  const f = fixture();
  const chain = (ls: FakeLayer[], entries: Record<string, Entry>) => {
    const ids = duccChainIds(ls.map((l) => l.hex));
    const dir = chainDir(f.repo, ids[ids.length - 1]!);
    writeTree(dir, entries);
    return dir;
  };
  return { ...f, chain };
}

const modeOf = (p: string) => fs.lstatSync(p).mode & 0o7777;

describe.skipIf(needs({ root: true }))('DUCC and cvmfs-thin chains on a real overlay', () => {
  it('a DUCC chain: special bits from the layers, owners and content from the chain, the root catalog marker hidden', async () => {
    const { repo, merged, chain } = setup();
    const l1 = addLayer(repo, 'l1', { 'bin/su': 'su', 'tmp/': { dir: true }, 'usr/bin/passwd': 'pw', 'gone/x': 'x', 'sg/': { dir: true } });
    const l2 = addLayer(repo, 'l2', { 'usr/bin/passwd': 'pw2', '.wh.gone': '', '.cvmfscatalog': '' });
    // DUCC's layerfs: modes right, owners root
    fs.chmodSync(path.join(l1.dir, 'bin/su'), 0o4755);
    fs.chmodSync(path.join(l1.dir, 'tmp'), 0o1777);
    fs.chmodSync(path.join(l1.dir, 'usr/bin/passwd'), 0o4755);
    fs.chmodSync(path.join(l1.dir, 'gone/x'), 0o4755);
    fs.chmodSync(path.join(l1.dir, 'sg'), 0o2775);
    fs.chmodSync(path.join(l2.dir, 'usr/bin/passwd'), 0o755); // the top layer's entry has no setuid: stays so
    // DUCC's chain: owners right, special bits gone, a catalog marker at its root
    const c = chain([l1, l2], { 'bin/su': 'su-chain', 'tmp/': { dir: true }, 'usr/bin/passwd': 'pw2', 'sg/': { dir: true }, '.cvmfscatalog': '' });
    fs.chmodSync(path.join(c, 'bin/su'), 0o755);
    fs.chownSync(path.join(c, 'bin/su'), 1000, 1001);
    fs.utimesSync(path.join(c, 'bin/su'), 1_500_000_000, 1_500_000_000);
    fs.chmodSync(path.join(c, 'tmp'), 0o777);
    fs.chmodSync(path.join(c, 'sg'), 0o775);
    fs.chmodSync(path.join(c, 'usr/bin/passwd'), 0o755);
    const { target, how } = await merged([l1, l2]);
    expect(how).toEqual(['mask-above', 'chain']);
    const su = fs.lstatSync(path.join(target, 'bin/su'));
    expect([su.mode & 0o7777, su.uid, su.gid, su.mtimeMs]).toEqual([0o4755, 1000, 1001, 1_500_000_000_000]);
    expect(fs.readFileSync(path.join(target, 'bin/su'), 'utf8')).toBe('su-chain');
    expect(modeOf(path.join(target, 'tmp'))).toBe(0o1777);
    expect(modeOf(path.join(target, 'sg'))).toBe(0o2775);
    expect(modeOf(path.join(target, 'usr/bin/passwd'))).toBe(0o755);
    expect(fs.existsSync(path.join(target, 'gone'))).toBe(false);
    expect(fs.readdirSync(target).sort()).toEqual(['bin', 'sg', 'tmp', 'usr']);
  });

  it('a chain over our own layers keeps its modes: only the catalog marker is hidden, nothing is walked or copied', async () => {
    const { repo, merged, chain, work } = setup();
    const l1 = addLayer(repo, 'o1', { 'bin/su': 'su' }, { converter: true });
    const l2 = addLayer(repo, 'o2', { 'etc/x': 'x' }, { record: { deleted: [], opaque: [], xattrs: [], hidden: [] } });
    fs.chmodSync(path.join(l1.dir, 'bin/su'), 0o4755);
    chain([l1, l2], { 'bin/su': 'su', 'etc/x': 'x', '.cvmfscatalog': '' });
    const { target, how } = await merged([l1, l2]);
    expect(how).toEqual(['mask-above', 'chain']);
    expect(fs.readdirSync(target).sort()).toEqual(['bin', 'etc']);
    // the chain's own mode (as written here), nothing taken from the layers
    expect(modeOf(path.join(target, 'bin/su'))).toBe(0o644);
    const above = path.join(work, 'masks', fs.readdirSync(path.join(work, 'masks'))[0]!, 'above');
    expect(fs.readdirSync(above)).toEqual(['.cvmfscatalog']);
  });

  it('a chain without a marker and nothing lost is used as is', async () => {
    const { repo, merged, chain } = setup();
    const l1 = addLayer(repo, 'p1', { a: 'a' });
    const l2 = addLayer(repo, 'p2', { b: 'b' });
    chain([l1, l2], { a: 'a', b: 'b' });
    expect((await merged([l1, l2])).how).toEqual(['chain']);
  });
});
