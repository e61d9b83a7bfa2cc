/**
 * The podman store writer's semantics on fake converted trees (no root, no
 * podman): the containers/storage layout, incremental and idempotent adds,
 * layer reuse, unique names, hostile input, repair of interrupted updates.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  addImageToPodmanStore,
  addTreeImageToPodmanStore,
  checkPodmanStore,
  layerIds,
  podmanNameOfTreeName,
  shortLink,
  storageConf,
} from '../../src/convert/podman/index.js';
import { bigDataFileName } from '../../src/convert/podman/format.js';
import { needs, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { fakeImage, readJson } from './tree.js';
import { systemHost } from '../../src/core/host/host.js';

interface L {
  id: string;
  parent?: string;
  'compressed-diff-digest': string;
  'diff-digest': string;
  'diff-size'?: number;
}
interface I {
  id: string;
  digest: string;
  names?: string[];
  'names-history'?: string[];
  layer: string;
  'big-data-names': string[];
  'big-data-digests': Record<string, string>;
}

const work = tempDir('cvmfs-thin-podman-store-');
let n = 0;
function newRepo(): string {
  const r = path.join(work, `repo${n++}`);
  fs.mkdirSync(r);
  return r;
}
const S = (repo: string, ...p: string[]) => path.join(repo, 'podmanStore', ...p);
const layersOf = (repo: string) => readJson<L[]>(S(repo, 'overlay-layers', 'layers.json'));
const imagesOf = (repo: string) => readJson<I[]>(S(repo, 'overlay-images', 'images.json'));

describe('podman store: layout', () => {
  it('writes containers/storage overlay layers whose diff is the repository layer, links, lowers, JSON, big data and lock tokens', async () => {
    const repo = newRepo();
    const img = fakeImage(repo, 'registry.example.org/team/app:1', [{ seed: 'base' }, { seed: 'mid' }, { seed: 'top' }]);
    const r = await addImageToPodmanStore(repo, img.input, { host: systemHost });
    expect(r).toMatchObject({
      status: 'added',
      image_id: img.configDigest.slice(7),
      names: ['registry.example.org/team/app:1'],
      names_moved: [],
      repaired: false,
      warnings: [],
    });
    const ids = layerIds(img.layers.map((l) => l.diffId));
    expect(ids[0]).toBe(img.layers[0]!.diffId.slice(7));
    expect(r.layers_added).toEqual(ids);
    ids.forEach((id, i) => {
      const dir = S(repo, 'overlay', id);
      const hex = img.layers[i]!.digest.slice(7);
      // absolute (containers/storage refuses relative diff links), at the repository's mount point: here the directory itself
      expect(fs.readlinkSync(path.join(dir, 'diff'))).toBe(`${repo}/.layers/${hex.slice(0, 2)}/${hex}/layerfs`);
      expect(fs.readlinkSync(S(repo, 'overlay-layers', `${id}.tar-split.gz`))).toBe(`../../.layers/${hex.slice(0, 2)}/${hex}/.metadata/tar-split.json.gz`);
      // podman's own unpack leaves every layer root 0555 (root-owned); a container's / gets the top layer's
      expect(fs.statSync(path.join(dir, 'diff')).mode & 0o7777).toBe(0o555);
      expect(fs.readFileSync(path.join(dir, 'diff', i === 0 ? 'base' : i === 1 ? 'mid' : 'top'), 'utf8')).toMatch(/^(base|mid|top)\n$/);
      const link = fs.readFileSync(path.join(dir, 'link'), 'utf8');
      expect(link).toMatch(/^[A-Z2-7]{26}$/);
      expect(link).toBe(shortLink(id));
      expect(fs.readlinkSync(S(repo, 'overlay', 'l', link))).toBe(`../${id}/diff`);
      const lower = ids
        .slice(0, i)
        .reverse()
        .map((p) => `l/${shortLink(p)}`)
        .join(':');
      if (i === 0) expect(fs.existsSync(path.join(dir, 'lower'))).toBe(false);
      else expect(fs.readFileSync(path.join(dir, 'lower'), 'utf8')).toBe(lower);
    });
    const layers = layersOf(repo);
    expect(layers.map((l) => [l.id, l.parent ?? null])).toEqual([
      [ids[0], null],
      [ids[1], ids[0]],
      [ids[2], ids[1]],
    ]);
    expect(layers[1]).toMatchObject({ 'compressed-diff-digest': img.layers[1]!.digest, 'diff-digest': img.layers[1]!.diffId, 'diff-size': 10240 + 3 });
    const [im] = imagesOf(repo);
    expect(im).toMatchObject({
      id: img.configDigest.slice(7),
      digest: img.manifestDigest,
      names: ['registry.example.org/team/app:1'],
      layer: ids[2],
      created: '2024-01-02T03:04:05Z',
    });
    expect(im!['big-data-names']).toEqual(['manifest', `manifest-${img.manifestDigest}`, img.configDigest]);
    expect(fs.readFileSync(S(repo, 'overlay-images', im!.id, 'manifest'))).toEqual(img.input.manifest);
    expect(fs.readFileSync(S(repo, 'overlay-images', im!.id, bigDataFileName(img.configDigest)))).toEqual(img.input.config);
    expect(bigDataFileName(img.configDigest)).toBe(`=${Buffer.from(img.configDigest).toString('base64')}`);
    for (const f of ['overlay-layers/layers.lock', 'overlay-images/images.lock']) expect(fs.statSync(S(repo, f)).size).toBe(64);
    expect(fs.statSync(S(repo, 'overlay-layers', 'layers.json')).mode & 0o777).toBe(0o644);
    expect(fs.existsSync(S(repo, '.cvmfs-thin-update'))).toBe(false);
    // nested catalogs for a published store (as DUCC's)
    for (const d of ['', 'overlay', 'overlay-images']) expect(fs.statSync(S(repo, d, '.cvmfscatalog')).isFile()).toBe(true);
    expect(await checkPodmanStore(repo)).toEqual({ images: 1, layers: 3, problems: [] });
  });

  it.skipIf(needs({ root: 'only root gives a layer root to root' }))(
    'a layer root of another owner is given to root through the host, a root-owned one is left',
    async () => {
      const repo = newRepo();
      const img = fakeImage(repo, 'registry.example.org/team/owners:1', [{ seed: 'mine' }, { seed: 'theirs' }]);
      const hex = img.layers[1]!.digest.slice(7);
      const theirs = path.join(repo, '.layers', hex.slice(0, 2), hex, 'layerfs');
      fs.chownSync(theirs, 1000, 1000);
      const host = new RecordingHost();
      await addImageToPodmanStore(repo, img.input, { host });
      expect(host.ops('lchown').map((c) => c.args)).toEqual([[theirs, 0, 0]]);
    },
  );

  it('adding an image that is there writes nothing; a second image reuses shared layers and leaves others untouched', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'base' }, { seed: 'a' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const snap = () =>
      ['overlay-layers/layers.json', 'overlay-images/images.json', 'overlay-layers/layers.lock', 'overlay-images/images.lock'].map((f) => {
        const st = fs.statSync(S(repo, f));
        return [st.ino, st.mtimeMs, fs.readFileSync(S(repo, f)).toString('hex')];
      });
    const before = snap();
    const rootMtime = fs.statSync(S(repo)).mtimeMs;
    const aDir = fs.statSync(S(repo, 'overlay', layerIds([a.layers[0]!.diffId])[0]!));
    const again = await addImageToPodmanStore(repo, a.input, { host: systemHost });
    expect(again.status).toBe('present');
    expect(again.layers_added).toEqual([]);
    expect(snap()).toEqual(before);
    expect(fs.statSync(S(repo)).mtimeMs).toBe(rootMtime); // not even the update marker came and went
    const aRecord = imagesOf(repo)[0];
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'base' }, { seed: 'b' }]);
    const rb = await addImageToPodmanStore(repo, b.input, { host: systemHost });
    const base = layerIds([a.layers[0]!.diffId])[0]!;
    expect(rb.layers_reused).toEqual([base]);
    expect(rb.layers_added).toHaveLength(1);
    expect(fs.statSync(S(repo, 'overlay', base)).ino).toBe(aDir.ino);
    expect(layersOf(repo).filter((l) => l.id === base)).toHaveLength(1);
    expect(imagesOf(repo)[0]).toEqual(aRecord);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('a layer at another position of another stack gets its own entry (containers/image layer IDs)', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'y' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const rb = await addImageToPodmanStore(repo, b.input, { host: systemHost });
    const [, yOnX] = layerIds(a.layers.map((l) => l.diffId));
    expect(rb.layers_added).toEqual([b.layers[0]!.diffId.slice(7)]);
    expect(rb.layers_added[0]).not.toBe(yOnX);
    expect(layersOf(repo)).toHaveLength(3);
    // both point at the same repository directory: no copy
    expect(fs.readlinkSync(S(repo, 'overlay', yOnX!, 'diff'))).toBe(fs.readlinkSync(S(repo, 'overlay', rb.layers_added[0]!, 'diff')));
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('a layer already in the store from another blob of the same content (gzip vs zstd) is reused as it is', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }]);
    const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'x-zstd', sameContentAs: 'x' }, { seed: 'b' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const [x] = layerIds([a.layers[0]!.diffId]);
    const target = fs.readlinkSync(S(repo, 'overlay', x!, 'diff'));
    const rb = await addImageToPodmanStore(repo, b.input, { host: systemHost });
    expect(rb.layers_reused).toEqual([x]);
    expect(fs.readlinkSync(S(repo, 'overlay', x!, 'diff'))).toBe(target);
    expect((await addImageToPodmanStore(repo, b.input, { host: systemHost })).status).toBe('present');
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('the same image under another manifest keeps its default manifest and adds the new one by digest', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const m2 = Buffer.from(a.input.manifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"annotations":{"k":"v"}'));
    const r = await addImageToPodmanStore(repo, { ...a.input, manifest: m2, names: ['registry.example.org/a:2'] }, { host: systemHost });
    expect(r.status).toBe('updated');
    const [im] = imagesOf(repo);
    expect(im!.names).toEqual(['registry.example.org/a:1', 'registry.example.org/a:2']);
    expect(im!.digest).toBe(a.manifestDigest);
    expect(im!['big-data-digests']['manifest']).toBe(a.manifestDigest);
    expect(Object.keys(im!['big-data-digests']).filter((k) => k.startsWith('manifest-'))).toHaveLength(2);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });
});

describe('podman store: names', () => {
  it('a tag that moves to a new image leaves the old one in names-history; names never appear twice', async () => {
    const repo = newRepo();
    const v1 = fakeImage(repo, 'registry.example.org/app:latest', [{ seed: 'one' }]);
    await addImageToPodmanStore(repo, v1.input, { host: systemHost });
    const v2 = fakeImage(repo, 'registry.example.org/app:latest', [{ seed: 'two' }]);
    const r = await addImageToPodmanStore(repo, v2.input, { host: systemHost });
    expect(r.names_moved).toEqual([{ name: 'registry.example.org/app:latest', from: v1.configDigest.slice(7) }]);
    const images = imagesOf(repo);
    expect(images.find((i) => i.id === v1.configDigest.slice(7))).toMatchObject({ names: [], 'names-history': ['registry.example.org/app:latest'] });
    expect(images.find((i) => i.id === v2.configDigest.slice(7))!.names).toEqual(['registry.example.org/app:latest']);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('the same repository:tag from two registries are two images; Docker Hub names are docker.io', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.one.org/team/app:1', [{ seed: 'one' }]);
    const b = fakeImage(repo, 'registry.two.org:5000/team/app:1', [{ seed: 'two' }]);
    await addTreeImageToPodmanStore(repo, a.treeName, { host: systemHost });
    const rb = await addTreeImageToPodmanStore(repo, b.treeName, { host: systemHost });
    expect(rb.names_moved).toEqual([]);
    expect(imagesOf(repo).map((i) => i.names)).toEqual([['registry.one.org/team/app:1'], ['registry.two.org:5000/team/app:1']]);
    expect(podmanNameOfTreeName('registry.hub.docker.com/library/centos:7')).toBe('docker.io/library/centos:7');
    const hub = fakeImage(repo, 'registry.hub.docker.com/library/centos:7', [{ seed: 'centos' }]);
    expect((await addTreeImageToPodmanStore(repo, hub.treeName, { host: systemHost })).names).toEqual(['docker.io/library/centos:7']);
  });
});

describe('podman store: hostile and broken input', () => {
  it('refuses inconsistent input, naming what is wrong, and writes nothing', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    const bad = async (input: typeof a.input, code: string, msg: RegExp) => {
      const e = await addImageToPodmanStore(repo, input, { host: systemHost }).then(
        () => null,
        (x: unknown) => x as { code: string; message: string },
      );
      expect(e?.code).toBe(code);
      expect(e?.message).toMatch(msg);
    };
    await bad(
      { ...a.input, config: Buffer.from(a.input.config.toString().replace('amd64', 'arm64')) },
      'CVMFS_THIN_PODMAN_BAD_INPUT',
      /manifest names config "sha256:[0-9a-f]{64}", the config given has digest sha256:/,
    );
    await bad({ ...a.input, layers: a.input.layers.slice(1) }, 'CVMFS_THIN_PODMAN_BAD_INPUT', /the manifest has 2 layers, 1 were given/);
    await bad(
      { ...a.input, layers: [a.input.layers[0]!, { ...a.input.layers[1]!, diffId: a.input.layers[0]!.diffId }] },
      'CVMFS_THIN_PODMAN_BAD_INPUT',
      /layer 1 has diff ID .* the config says/,
    );
    await bad(
      { ...a.input, layers: [a.input.layers[0]!, { ...a.input.layers[1]!, digest: 'sha256:../../etc' }] },
      'CVMFS_THIN_PODMAN_BAD_DIGEST',
      /layer 1 digest: "sha256:..\/..\/etc" is not a sha256 digest/,
    );
    await bad({ ...a.input, names: ['has space/x:1'] }, 'CVMFS_THIN_PODMAN_BAD_NAME', /image name "has space\/x:1"/);
    await bad({ ...a.input, names: [] }, 'CVMFS_THIN_PODMAN_BAD_NAME', /at least one name/);
    await bad({ ...a.input, manifest: Buffer.from('[1]') }, 'CVMFS_THIN_PODMAN_BAD_INPUT', /manifest is not a JSON object/);
    fs.rmSync(path.join(repo, '.layers', a.layers[1]!.digest.slice(7, 9)), { recursive: true });
    await bad(a.input, 'CVMFS_THIN_PODMAN_LAYER_MISSING', /layer 1 sha256:[0-9a-f]{64} is not in the repository/);
    expect(fs.existsSync(S(repo))).toBe(false);
  });

  it('refuses layers with plain .wh.* whiteouts (kernel overlay ignores them) unless told the nodes use fuse-overlayfs', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/ducc:1', [
      { seed: 'x', noMarker: true },
      { seed: 'y', plainWhiteout: true },
    ]);
    const e = await addImageToPodmanStore(repo, a.input, { host: systemHost }).then(
      () => null,
      (x: unknown) => x as { code: string; message: string },
    );
    expect(e?.code).toBe('CVMFS_THIN_PODMAN_PLAIN_WHITEOUTS');
    expect(e?.message).toContain('.wh.y-gone');
    const r = await addImageToPodmanStore(repo, a.input, { host: systemHost, allowPlainWhiteouts: true });
    expect(r.status).toBe('added');
    expect(r.warnings.join()).toMatch(/fuse-overlayfs/);
    const notes = r.layers_added.map((id) => readJson<{ whiteouts: string }>(S(repo, 'overlay', id, 'cvmfs-thin.json')).whiteouts);
    expect(notes).toEqual(['none', 'plain']);
  });

  it('refuses a store directory that is a symbolic link, and JSON that is not a list of records', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }]);
    const elsewhere = path.join(work, `elsewhere${n}`);
    fs.mkdirSync(elsewhere);
    fs.symlinkSync(elsewhere, S(repo));
    await expect(addImageToPodmanStore(repo, a.input, { host: systemHost })).rejects.toMatchObject({ code: 'CVMFS_THIN_PODMAN_BAD_STORE' });
    expect(fs.readdirSync(elsewhere)).toEqual([]);
    fs.unlinkSync(S(repo));
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    fs.writeFileSync(S(repo, 'overlay-layers', 'layers.json'), '{"id": 1}');
    await expect(addImageToPodmanStore(repo, fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'z' }]).input, { host: systemHost })).rejects.toMatchObject({
      code: 'CVMFS_THIN_PODMAN_BAD_STORE',
    });
    expect(fs.readFileSync(S(repo, 'overlay-layers', 'layers.json'), 'utf8')).toBe('{"id": 1}');
    await expect(addTreeImageToPodmanStore(repo, 'registry.example.org/../../etc:1', { host: systemHost })).rejects.toMatchObject({
      code: 'CVMFS_THIN_PODMAN_BAD_NAME',
    });
    await expect(addTreeImageToPodmanStore(repo, 'registry.example.org/never/converted:1', { host: systemHost })).rejects.toMatchObject({
      code: 'CVMFS_THIN_PODMAN_IMAGE_MISSING',
    });
  });

  it('repairs a damaged layer entry (wrong diff target, missing short link) and leftovers of an interrupted update', async () => {
    const repo = newRepo();
    const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'x' }, { seed: 'y' }]);
    await addImageToPodmanStore(repo, a.input, { host: systemHost });
    const [x, y] = layerIds(a.layers.map((l) => l.diffId));
    fs.unlinkSync(S(repo, 'overlay', y!, 'diff'));
    fs.symlinkSync('/etc', S(repo, 'overlay', y!, 'diff'));
    fs.unlinkSync(S(repo, 'overlay', 'l', shortLink(x!)));
    fs.writeFileSync(S(repo, '.cvmfs-thin-update'), '1\n');
    fs.mkdirSync(S(repo, 'overlay-images', '.tmp-abcdef-1-zz'));
    expect((await checkPodmanStore(repo)).problems.length).toBeGreaterThanOrEqual(2);
    const r = await addImageToPodmanStore(repo, a.input, { host: systemHost });
    expect(r.repaired).toBe(true);
    expect(r.layers_added.sort()).toEqual([x, y].sort());
    expect(fs.existsSync(S(repo, 'overlay-images', '.tmp-abcdef-1-zz'))).toBe(false);
    expect(await checkPodmanStore(repo)).toEqual({ images: 1, layers: 2, problems: [] });
  });
});

describe('podman store: node configuration', () => {
  it('prints the storage.conf lines for podman and CRI-O nodes', () => {
    const conf = storageConf();
    expect(conf).toContain('additionalimagestores = ["/cvmfs/unpacked.cern.ch/podmanStore"]');
    expect(conf).toContain('driver = "overlay"');
    expect(storageConf({ repositoryMount: '/cvmfs/x.example.org', fuseOverlayfs: true })).toContain('mount_program = "/usr/bin/fuse-overlayfs"');
  });
});
