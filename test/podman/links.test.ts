/**
 * What containers/storage needs beyond `run` (no root, no podman; the real
 * podman runs are in podman-tools.e2e.test.ts): absolute `diff` links at the
 * repository's mount point on the nodes (`storeRoot`), one mount point per
 * store, stores of relative links (earlier versions) made absolute, the
 * layers' tar-splits linked for `podman save`, layer roots 0555 as podman's
 * own unpack leaves them, and what removal does to all of these.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addImageToPodmanStore, checkPodmanStore, collectPodmanStore, layerIds, removeNamesFromPodmanStore } from '../../src/convert/podman/index.js';
import { resolvePodmanStoreRoot } from '../../src/convert/run.js';
import { tempDir } from '../helpers/env.js';
import { fakeImage, readJson } from './tree.js';
import { systemHost } from '../../src/core/host/host.js';

const work = tempDir('cvmfs-thin-podman-links-');
let n = 0;
function newRepo(): string {
  const r = path.join(work, `repo${n++}`);
  fs.mkdirSync(r);
  return r;
}
const S = (repo: string, ...p: string[]) => path.join(repo, 'podmanStore', ...p);
const rootfs = (repo: string, digest: string) => path.join(repo, '.layers', digest.slice(7, 9), digest.slice(7), 'layerfs');
const namesOf = (repo: string) => readJson<{ id: string; names?: string[]; 'names-history'?: string[] }[]>(S(repo, 'overlay-images', 'images.json'));
/** Every file of the store with its content and times: what "writes nothing" is checked against. */
function storeState(repo: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(
        `${path.relative(repo, p)} ${st.mode} ${st.mtimeMs} ${st.ctimeMs} ${e.isFile() ? fs.readFileSync(p).toString('hex') : e.isSymbolicLink() ? fs.readlinkSync(p) : ''}`,
      );
      if (e.isDirectory()) walk(p);
    }
  };
  walk(S(repo));
  return out;
}

describe('podman store: diff links at the mount point', () => {
  it('points every diff at the given mount root; checked in the repository directory', async () => {
    const repo = newRepo();
    const img = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    await addImageToPodmanStore(repo, img.input, { host: systemHost, storeRoot: '/cvmfs/sw.example.org' });
    for (const [i, id] of layerIds(img.layers.map((l) => l.diffId)).entries()) {
      const hex = img.layers[i]!.digest.slice(7);
      expect(fs.readlinkSync(S(repo, 'overlay', id, 'diff'))).toBe(`/cvmfs/sw.example.org/.layers/${hex.slice(0, 2)}/${hex}/layerfs`);
    }
    // valid at the nodes' mount point, though it does not resolve here
    expect(await checkPodmanStore(repo)).toEqual({ images: 1, layers: 2, problems: [] });
    expect(await checkPodmanStore(repo, { storeRoot: '/cvmfs/sw.example.org' })).toEqual({ images: 1, layers: 2, problems: [] });
    expect((await checkPodmanStore(repo, { storeRoot: repo })).problems[0]).toMatch(/not an absolute link into/);
    expect((await addImageToPodmanStore(repo, img.input, { host: systemHost, storeRoot: '/cvmfs/sw.example.org' })).status).toBe('present');
  });

  it.each([
    ['relative', 'cvmfs/sw.example.org'],
    ['the root', '/'],
    ['not normalised', '/cvmfs/../x'],
    ['a trailing slash', '/cvmfs/x/'],
    ['a newline', '/cvmfs/x\ny'],
    ['empty', ''],
  ])('refuses a mount root that is %s, before writing anything', async (_what, root) => {
    const repo = newRepo();
    const img = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }]);
    await expect(addImageToPodmanStore(repo, img.input, { host: systemHost, storeRoot: root })).rejects.toMatchObject({
      code: 'CVMFS_THIN_PODMAN_STORE_ROOT',
      kind: 'invalid-argument',
    });
    expect(fs.existsSync(S(repo))).toBe(false);
  });

  it('refuses to mix mount roots in one store, naming both; the store is unchanged', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }]);
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'z' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost, storeRoot: '/cvmfs/one.example.org' });
    const before = storeState(repo);
    const err = await addImageToPodmanStore(repo, b.input, { host: systemHost, storeRoot: '/cvmfs/two.example.org' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'CVMFS_THIN_PODMAN_STORE_ROOT', kind: 'failed-precondition' });
    expect((err as Error).message).toMatch(/point into \/cvmfs\/one\.example\.org.*would write \/cvmfs\/two\.example\.org/);
    expect(storeState(repo)).toEqual(before);
    expect(namesOf(repo).flatMap((i) => i.names)).toEqual(['registry.example.org/a:1']);
  });

  it('a store of relative links (written by an earlier version) gets absolute ones at the next update', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const ids = layerIds(a.layers.map((l) => l.diffId));
    for (const [i, id] of ids.entries()) {
      const hex = a.layers[i]!.digest.slice(7);
      fs.unlinkSync(S(repo, 'overlay', id, 'diff'));
      fs.symlinkSync(`../../../.layers/${hex.slice(0, 2)}/${hex}/layerfs`, S(repo, 'overlay', id, 'diff'));
    }
    expect((await checkPodmanStore(repo)).problems).toHaveLength(2);
    // another image's update rewrites a's links too
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'z' }]);
    await addImageToPodmanStore(repo, b.input, { host: systemHost });
    for (const id of ids) expect(fs.readlinkSync(S(repo, 'overlay', id, 'diff'))).toMatch(new RegExp(`^${repo}/\\.layers/`));
    expect(await checkPodmanStore(repo)).toEqual({ images: 2, layers: 3, problems: [] });
  });

  it('the converter: --podman-store-root, else /cvmfs/<repository> when the name is given, else the repository directory', () => {
    expect(resolvePodmanStoreRoot({ podmanStoreRoot: '/cvmfs/x.org/' }, '/srv/tree')).toBe('/cvmfs/x.org');
    expect(resolvePodmanStoreRoot({ repository: 'sw.example.org' }, '/srv/tree')).toBe('/cvmfs/sw.example.org');
    expect(resolvePodmanStoreRoot({}, '/srv/tree', 'recipe.example.org')).toBe('/cvmfs/recipe.example.org');
    expect(resolvePodmanStoreRoot({}, '/cvmfs/unpacked.cern.ch')).toBe('/cvmfs/unpacked.cern.ch');
    expect(() => resolvePodmanStoreRoot({ podmanStoreRoot: 'relative/dir' }, '/srv/tree')).toThrow(
      expect.objectContaining({ code: 'CVMFS_THIN_PODMAN_STORE_ROOT' }),
    );
  });
});

describe('podman store: tar-splits and layer roots', () => {
  it('links each layer tar-split; a layer without one is added with a warning naming it, and no link', async () => {
    const repo = newRepo();
    const img = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'ducc', noTarSplit: true }]);
    const r = await addImageToPodmanStore(repo, img.input, { host: systemHost });
    const [x, ducc] = layerIds(img.layers.map((l) => l.diffId));
    expect(fs.readFileSync(S(repo, 'overlay-layers', `${x}.tar-split.gz`))).toEqual(
      fs.readFileSync(path.join(repo, '.layers', img.layers[0]!.digest.slice(7, 9), img.layers[0]!.digest.slice(7), '.metadata', 'tar-split.json.gz')),
    );
    expect(fs.existsSync(S(repo, 'overlay-layers', `${ducc}.tar-split.gz`))).toBe(false);
    expect(r.warnings).toEqual([expect.stringMatching(new RegExp(`without a tar-split.*${img.layers[1]!.digest}.*podman save and push of this image fail`))]);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
    // a stale link (its target gone) is a problem, and the next update of the image removes it
    fs.rmSync(path.join(repo, '.layers', img.layers[0]!.digest.slice(7, 9), img.layers[0]!.digest.slice(7), '.metadata', 'tar-split.json.gz'));
    expect((await checkPodmanStore(repo)).problems).toEqual([expect.stringMatching(/tar-split\.gz points to/)]);
    expect((await addImageToPodmanStore(repo, img.input, { host: systemHost })).status).toBe('updated');
    expect(fs.existsSync(S(repo, 'overlay-layers', `${x}.tar-split.gz`))).toBe(false);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('gives layer roots podman mode 0555 (and root ownership when run as root); an image whose root changed is not "present"', async () => {
    const repo = newRepo();
    const img = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    for (const l of img.layers) fs.chmodSync(rootfs(repo, l.digest), 0o2775);
    await addImageToPodmanStore(repo, img.input, { host: systemHost });
    for (const l of img.layers) {
      const st = fs.statSync(rootfs(repo, l.digest));
      expect(st.mode & 0o7777).toBe(0o555);
      if (process.geteuid?.() === 0) expect([st.uid, st.gid]).toEqual([0, 0]);
    }
    fs.chmodSync(rootfs(repo, img.layers[1]!.digest), 0o755);
    const r = await addImageToPodmanStore(repo, img.input, { host: systemHost });
    expect(r.status).toBe('updated');
    expect(r.layers_added).toEqual([layerIds(img.layers.map((l) => l.diffId))[1]]);
    expect(fs.statSync(rootfs(repo, img.layers[1]!.digest)).mode & 0o7777).toBe(0o555);
    expect((await addImageToPodmanStore(repo, img.input, { host: systemHost })).status).toBe('present');
  });
});

describe('podman store: removal by name', () => {
  async function twoImages() {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'base' }, { seed: 'a' }]);
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'base' }, { seed: 'b' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    await addImageToPodmanStore(repo, { ...a.input, names: ['registry.example.org/a:latest'] }, { host: systemHost });
    await addImageToPodmanStore(repo, b.input, { host: systemHost });
    return { repo, a, b };
  }

  it('an image keeps its other names; one left without a name goes with the layers and tar-split links only it used', async () => {
    const { repo, a, b } = await twoImages();
    const r1 = await removeNamesFromPodmanStore(repo, ['registry.example.org/a:1'], { host: systemHost });
    expect(r1).toEqual({
      untagged: [{ id: a.configDigest.slice(7), name: 'registry.example.org/a:1' }],
      removed_images: [],
      removed_layers: [],
      not_found: [],
    });
    expect(namesOf(repo).find((i) => i.id === a.configDigest.slice(7))).toMatchObject({
      names: ['registry.example.org/a:latest'],
      'names-history': ['registry.example.org/a:1'],
    });
    const [, bTop] = layerIds(b.layers.map((l) => l.diffId));
    const r2 = await removeNamesFromPodmanStore(repo, ['registry.example.org/b:1', 'registry.example.org/never:1'], { host: systemHost });
    expect(r2).toMatchObject({ removed_images: [b.configDigest.slice(7)], removed_layers: [bTop], not_found: ['registry.example.org/never:1'] });
    expect(fs.existsSync(S(repo, 'overlay', bTop!))).toBe(false);
    expect(fs.existsSync(S(repo, 'overlay-layers', `${bTop}.tar-split.gz`))).toBe(false);
    expect(fs.existsSync(S(repo, 'overlay-images', b.configDigest.slice(7)))).toBe(false);
    // the repository's layers are not the store's to remove
    expect(fs.existsSync(rootfs(repo, b.layers[1]!.digest))).toBe(true);
    expect(await checkPodmanStore(repo)).toEqual({ images: 1, layers: 2, problems: [] });
  });

  it('a dry run, and names no image holds, write nothing', async () => {
    const { repo, b } = await twoImages();
    const before = storeState(repo);
    expect(await removeNamesFromPodmanStore(repo, ['registry.example.org/b:1'], { host: systemHost, dryRun: true })).toMatchObject({
      removed_images: [b.configDigest.slice(7)],
    });
    expect(await removeNamesFromPodmanStore(repo, ['registry.example.org/none:1'], { host: systemHost })).toMatchObject({
      untagged: [],
      not_found: ['registry.example.org/none:1'],
    });
    expect(storeState(repo)).toEqual(before);
    expect(await removeNamesFromPodmanStore(newRepo(), ['registry.example.org/b:1'], { host: systemHost })).toMatchObject({
      not_found: ['registry.example.org/b:1'],
    });
  });

  it('gc with nothing to remove writes nothing to the store (no marker, no new tokens)', async () => {
    const { repo } = await twoImages();
    const before = storeState(repo);
    const r = await collectPodmanStore(repo, { host: systemHost, graceMs: 0 });
    expect(r).toMatchObject({ removed_images: [], removed_layers: [] });
    expect(storeState(repo)).toEqual(before);
  });
});
