/**
 * Removing images from the podman store: gc after `cvmfs-thin gc` (images no
 * converted image references go after the grace period, at once when a
 * layer they need is gone; layers only they used go with them), dry runs,
 * and removal by name.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { addImageToPodmanStore, checkPodmanStore, collectPodmanStore, layerIds, removeImagesFromPodmanStore } from '../../src/convert/podman/index.js';
import { tempDir } from '../helpers/env.js';
import { fakeImage, readJson } from './tree.js';
import { systemHost } from '../../src/core/host/host.js';

const work = tempDir('cvmfs-thin-podman-gc-');
let n = 0;
const HOUR = 3_600_000;

async function setup() {
  const repo = path.join(work, `repo${n++}`);
  fs.mkdirSync(repo);
  const a = fakeImage(repo, 'registry.example.org/a:1', [{ seed: 'base' }, { seed: 'a' }]);
  const b = fakeImage(repo, 'registry.example.org/b:1', [{ seed: 'base' }, { seed: 'b' }]);
  await addImageToPodmanStore(repo, a.input, { host: systemHost });
  await addImageToPodmanStore(repo, b.input, { host: systemHost });
  return { repo, a, b };
}
const ids = (repo: string) => readJson<{ id: string }[]>(path.join(repo, 'podmanStore', 'overlay-images', 'images.json')).map((i) => i.id);
const layerIdsOf = (repo: string) => readJson<{ id: string }[]>(path.join(repo, 'podmanStore', 'overlay-layers', 'layers.json')).map((l) => l.id);

describe('podman store: gc and removal', () => {
  it('keeps referenced images; an unreferenced one goes after the grace period with the layers only it used', async () => {
    const { repo, a, b } = await setup();
    expect((await collectPodmanStore(repo, { host: systemHost, graceMs: 0 })).removed_images).toEqual([]);
    fs.rmSync(path.join(repo, '.metadata', 'registry.example.org', 'b:1'), { recursive: true });
    const young = await collectPodmanStore(repo, { host: systemHost, graceMs: HOUR });
    expect(young.removed_images).toEqual([]);
    expect(young.kept_recent.map((k) => k.id)).toEqual([b.configDigest.slice(7)]);
    const dry = await collectPodmanStore(repo, { host: systemHost, graceMs: HOUR, now: Date.now() + 2 * HOUR, dryRun: true });
    expect(dry.removed_images.map((i) => i.id)).toEqual([b.configDigest.slice(7)]);
    expect(dry.removed_layers).toEqual([layerIds(b.layers.map((l) => l.diffId))[1]]);
    expect(ids(repo)).toHaveLength(2);
    expect(fs.existsSync(path.join(repo, 'podmanStore', '.cvmfs-thin-update'))).toBe(false);
    const r = await collectPodmanStore(repo, { host: systemHost, graceMs: HOUR, now: Date.now() + 2 * HOUR });
    expect(r.removed_images).toMatchObject([{ id: b.configDigest.slice(7), names: ['registry.example.org/b:1'], reason: 'no converted image references it' }]);
    const [, bTop] = layerIds(b.layers.map((l) => l.diffId));
    expect(r.removed_layers).toEqual([bTop]);
    expect(ids(repo)).toEqual([a.configDigest.slice(7)]);
    expect(layerIdsOf(repo)).toEqual(layerIds(a.layers.map((l) => l.diffId)));
    expect(fs.existsSync(path.join(repo, 'podmanStore', 'overlay', bTop!))).toBe(false);
    expect(fs.existsSync(path.join(repo, 'podmanStore', 'overlay-images', b.configDigest.slice(7)))).toBe(false);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('an image whose layer is gone from the repository goes at once', async () => {
    const { repo, a } = await setup();
    fs.rmSync(path.join(repo, '.layers', a.layers[1]!.digest.slice(7, 9), a.layers[1]!.digest.slice(7)), { recursive: true });
    const r = await collectPodmanStore(repo, { host: systemHost, graceMs: 7 * 24 * HOUR });
    expect(r.removed_images).toMatchObject([{ id: a.configDigest.slice(7), reason: 'a layer is gone from the repository' }]);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });

  it('a repository without a store has nothing to collect', async () => {
    const repo = path.join(work, 'empty');
    fs.mkdirSync(repo);
    expect(await collectPodmanStore(repo, { host: systemHost, graceMs: 0 })).toEqual({ removed_images: [], removed_layers: [], kept_recent: [], errors: [] });
    expect(fs.existsSync(path.join(repo, 'podmanStore'))).toBe(false);
  });

  it('removes images by name or ID; unknown references are reported', async () => {
    const { repo, a, b } = await setup();
    const r = await removeImagesFromPodmanStore(repo, ['registry.example.org/a:1', 'registry.example.org/nope:1'], { host: systemHost });
    expect(r.removed_images).toEqual([a.configDigest.slice(7)]);
    expect(r.not_found).toEqual(['registry.example.org/nope:1']);
    expect(r.removed_layers).toEqual([layerIds(a.layers.map((l) => l.diffId))[1]]);
    expect(ids(repo)).toEqual([b.configDigest.slice(7)]);
    expect((await removeImagesFromPodmanStore(repo, [b.configDigest.slice(7, 19)], { host: systemHost })).removed_images).toEqual([b.configDigest.slice(7)]);
    expect(layerIdsOf(repo)).toEqual([]);
    expect((await checkPodmanStore(repo)).problems).toEqual([]);
  });
});
