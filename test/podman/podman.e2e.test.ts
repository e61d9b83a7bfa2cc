/**
 * The podman store, proven with Debian's podman 4.3 for real: images built
 * here are pushed to a local docker-registry, converted with the CLI, added
 * to `<repo>/podmanStore`, and a private podman configured with that store as
 * an additional image store lists and runs them without pulling (kernel
 * overlay and fuse-overlayfs). The container's root file system is compared
 * with the one podman shows for the same image pulled normally.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addTreeImageToPodmanStore, checkPodmanStore, layerIds, STORE_DIR } from '../../src/convert/podman/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { json, runCli } from '../convert/cli.js';
import { buildRichLayers, diffSnapshots, type RichImage, snapshot, type Snapshot } from '../convert/fixtures.js';
import { type BuiltLayer, buildLayer, skopeoPush, writeLayout } from '../convert/images.js';
import { makePodman, type Podman, sh } from './podman.js';
import { systemHost } from '../../src/core/host/host.js';

const CONFIG = { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] };

function stage(root: string, files: Record<string, string>): string {
  for (const [rel, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    fs.writeFileSync(path.join(root, rel), content);
  }
  return root;
}

describe.skipIf(needs({ root: true, binaries: ['podman', 'fuse-overlayfs', 'runc', 'docker-registry', 'skopeo', 'tar', 'gzip', 'zstd', 'mount'] }))(
  'podman store with a real podman 4.3',
  () => {
    const work = tempDir('cvmfs-thin-podman-e2e-');
    const repo = path.join(work, 'repo');
    const store = path.join(repo, STORE_DIR);
    let reg: TestRegistry;
    let reg2: TestRegistry;
    let rich: RichImage;
    let other: BuiltLayer;
    const podmans: Podman[] = [];
    let kernel: Podman;
    const name = (r: TestRegistry, repoTag: string) => `${r.host}/${repoTag}`;

    const convert = async (ref: string) => {
      const r = await runCli(['convert', `docker://${ref}`, '--repository-dir', repo, '--no-thin', '--json']);
      const s = json<{ images: { status: string; error: unknown }[] }>(r);
      expect(
        s.images.map((i) => i.status),
        JSON.stringify(s),
      ).toEqual(['converted']);
    };
    /** The container's file system, its root's mode and owner under the key '/' (podman takes them from the image's top layer root). */
    const mountedSnapshot = async (p: Podman, image: string, pull: string): Promise<Snapshot> => {
      const id = (await p.run(['create', '--pull', pull, '--network', 'none', image])).stdout.trim();
      const mnt = (await p.run(['mount', id])).stdout.trim();
      try {
        const snap = snapshot(mnt);
        const st = fs.statSync(mnt);
        snap.entries.set('/', { type: 'dir', mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, xattrs: [] });
        return snap;
      } finally {
        await p.run(['umount', id]);
        await p.run(['rm', id]);
      }
    };

    beforeAll(async () => {
      fs.mkdirSync(repo);
      reg = await startRegistry();
      reg2 = await startRegistry();
      rich = buildRichLayers(path.join(work, 'rich'));
      other = buildLayer(stage(path.join(work, 'st-b'), { 'b-only': 'only in image b\n' }), 'gzip', path.join(work, 'blobs'), 'b');
      const layout = path.join(work, 'layout');
      writeLayout(layout, 'rich', [{ layers: rich.layers, config: CONFIG }]);
      writeLayout(layout, 'b', [{ layers: [rich.layers[0]!, other], config: CONFIG }]);
      const c = buildLayer(stage(path.join(work, 'st-c'), { 'c-only': 'added after podman started\n' }), 'zstd', path.join(work, 'blobs'), 'c');
      writeLayout(layout, 'c', [{ layers: [rich.layers[0]!, c], config: CONFIG }]);
      const d = buildLayer(stage(path.join(work, 'st-d'), { 'which-registry': 'the second registry\n' }), 'gzip', path.join(work, 'blobs'), 'd');
      writeLayout(layout, 'd', [{ layers: [rich.layers[0]!, d], config: CONFIG }]);
      await skopeoPush(layout, 'rich', `docker://${name(reg, 'test/rich:v1')}`);
      await skopeoPush(layout, 'b', `docker://${name(reg, 'test/b:v1')}`);
      await skopeoPush(layout, 'c', `docker://${name(reg, 'test/c:v1')}`);
      await skopeoPush(layout, 'd', `docker://${name(reg2, 'test/rich:v1')}`);
      for (const ref of [name(reg, 'test/rich:v1'), name(reg, 'test/b:v1')]) {
        await convert(ref);
        const r = await addTreeImageToPodmanStore(repo, ref, { host: systemHost });
        expect(r.status).toBe('added');
      }
      kernel = makePodman(path.join(work, 'podman-kernel'), { stores: [store] });
      podmans.push(kernel);
    }, 300_000);

    afterAll(async () => {
      for (const p of podmans) await p.destroy();
      await reg?.stop();
      await reg2?.stop();
    }, 180_000);

    it('lists the converted images as read-only, by name and digest', async () => {
      const imgs = JSON.parse((await kernel.run(['images', '--format', 'json'])).stdout) as { Names: string[]; ReadOnly: boolean; Digest: string }[];
      const names = imgs.flatMap((i) => i.Names).sort();
      expect(names).toEqual([name(reg, 'test/b:v1'), name(reg, 'test/rich:v1')].sort());
      expect(imgs.every((i) => i.ReadOnly)).toBe(true);
      expect((await checkPodmanStore(repo)).problems).toEqual([]);
    }, 180_000);

    it('runs an image without pulling, reading files that exist only in the repository; deleted files stay deleted', async () => {
      const expected = createHash('sha256')
        .update(fs.readFileSync(path.join(work, 'rich', 'stage1', 'big', 'random.bin')))
        .digest('hex');
      const out = await sh(
        kernel,
        name(reg, 'test/rich:v1'),
        'sha256sum /big/random.bin; cat /etc/passwd; test -e /etc/toremove || echo toremove-gone; ls /opt/tree; test -e /var/cache/dir || echo dir-gone',
      );
      expect(out).toContain(expected);
      expect(out).toContain('user:x:1000:1000');
      expect(out).toContain('toremove-gone');
      expect(out).toContain('dir-gone');
      expect(out.split('\n')).toContain('new');
      expect(out.split('\n')).not.toContain('x');
      // nothing was pulled: podman's own layers are only the containers' (parents in the store), no image of its own
      const own = JSON.parse(fs.readFileSync(path.join(kernel.dir, 'root', 'overlay-layers', 'layers.json'), 'utf8') || '[]') as { id: string }[];
      const storeLayers = new Set(
        (JSON.parse(fs.readFileSync(path.join(store, 'overlay-layers', 'layers.json'), 'utf8')) as { id: string }[]).map((l) => l.id),
      );
      expect(own.filter((l) => storeLayers.has(l.id))).toEqual([]);
      const ownImages = path.join(kernel.dir, 'root', 'overlay-images', 'images.json');
      expect(fs.existsSync(ownImages) ? fs.readFileSync(ownImages, 'utf8').replace(/\s/g, '') || '[]' : '[]').toBe('[]');
    }, 180_000);

    it('a second image sharing the base layer reuses its entry', async () => {
      const base = layerIds([rich.layers[0]!.diffId])[0]!;
      const layers = JSON.parse(fs.readFileSync(path.join(store, 'overlay-layers', 'layers.json'), 'utf8')) as { id: string }[];
      expect(layers.filter((l) => l.id === base)).toHaveLength(1);
      expect(layers).toHaveLength(4); // rich: 3, b: its own top only
      const again = await addTreeImageToPodmanStore(repo, name(reg, 'test/b:v1'), { host: systemHost });
      expect(again.status).toBe('present');
      expect(again.layers_reused).toContain(base);
      expect(await sh(kernel, name(reg, 'test/b:v1'), 'cat /b-only /etc/keep')).toBe('only in image b\nkept\n');
    }, 180_000);

    it('runs an image added after podman was first used', async () => {
      await convert(name(reg, 'test/c:v1'));
      const r = await addTreeImageToPodmanStore(repo, name(reg, 'test/c:v1'), { host: systemHost });
      expect(r.status).toBe('added');
      expect(r.layers_reused).toEqual([layerIds([rich.layers[0]!.diffId])[0]]);
      expect(await sh(kernel, name(reg, 'test/c:v1'), 'cat /c-only')).toBe('added after podman started\n');
    }, 180_000);

    it('the root file system equals the one of the same image pulled normally (kernel overlay and fuse-overlayfs)', async () => {
      const puller = makePodman(path.join(work, 'podman-pull'), { insecureRegistries: [reg.host] });
      podmans.push(puller);
      const pulled = await mountedSnapshot(puller, name(reg, 'test/rich:v1'), 'always');
      const fromStore = await mountedSnapshot(kernel, name(reg, 'test/rich:v1'), 'never');
      expect(pulled.entries.size).toBeGreaterThan(30);
      // the container's / as podman's own unpack makes it (0555, root), not the tar's 0755
      expect(pulled.entries.get('/')).toMatchObject({ mode: 0o555, uid: 0, gid: 0 });
      expect(diffSnapshots(pulled, fromStore, ['pulled', 'store (kernel overlay)'])).toEqual([]);
      const fuse = makePodman(path.join(work, 'podman-fuse'), { stores: [store], fuse: true });
      podmans.push(fuse);
      const viaFuse = await mountedSnapshot(fuse, name(reg, 'test/rich:v1'), 'never');
      expect(diffSnapshots(pulled, viaFuse, ['pulled', 'store (fuse-overlayfs)'])).toEqual([]);
      const out = await sh(fuse, name(reg, 'test/rich:v1'), 'test -e /etc/toremove || echo toremove-gone; ls /opt/tree');
      expect(out).toBe('toremove-gone\nnew\n');
    }, 180_000);

    it('names that collide across registries do not overwrite each other', async () => {
      const second = name(reg2, 'test/rich:v1');
      await convert(second);
      const r = await addTreeImageToPodmanStore(repo, second, { host: systemHost });
      expect(r.names_moved).toEqual([]);
      expect(await sh(kernel, second, 'cat /which-registry')).toBe('the second registry\n');
      expect(await sh(kernel, name(reg, 'test/rich:v1'), 'test -e /which-registry || echo first')).toBe('first\n');
    }, 180_000);

    it('a store left half-written by a killed update is still readable and is repaired by the next run', async () => {
      // what a converter killed between its steps leaves: the update marker, temporaries, a layer
      // directory and short link not yet in layers.json, an image directory not yet in images.json
      fs.writeFileSync(path.join(store, '.cvmfs-thin-update'), '999999\n');
      fs.mkdirSync(path.join(store, 'overlay', '.tmp-abc-999999-zz'));
      fs.writeFileSync(path.join(store, 'overlay-layers', '.layers.json.tmp-999999-zz'), '[{"id": "trunc');
      const orphan = 'f'.repeat(64);
      fs.mkdirSync(path.join(store, 'overlay', orphan));
      fs.symlinkSync('../../../.layers/00/nothing/layerfs', path.join(store, 'overlay', orphan, 'diff'));
      fs.symlinkSync(`../${orphan}/diff`, path.join(store, 'overlay', 'l', 'AAAAAAAAAAAAAAAAAAAAAAAAAA'));
      fs.mkdirSync(path.join(store, 'overlay-images', 'e'.repeat(64)));
      const imgs = JSON.parse((await kernel.run(['images', '--format', 'json'])).stdout) as unknown[];
      expect(imgs).toHaveLength(4);
      expect(await sh(kernel, name(reg, 'test/b:v1'), 'cat /b-only')).toBe('only in image b\n');
      const token = fs.readFileSync(path.join(store, 'overlay-images', 'images.lock'));
      const r = await addTreeImageToPodmanStore(repo, name(reg, 'test/b:v1'), { host: systemHost });
      expect(r.repaired).toBe(true);
      expect(fs.existsSync(path.join(store, '.cvmfs-thin-update'))).toBe(false);
      expect(fs.existsSync(path.join(store, 'overlay', '.tmp-abc-999999-zz'))).toBe(false);
      expect(fs.existsSync(path.join(store, 'overlay-layers', '.layers.json.tmp-999999-zz'))).toBe(false);
      expect(fs.existsSync(path.join(store, 'overlay', orphan))).toBe(false);
      expect(fs.existsSync(path.join(store, 'overlay', 'l', 'AAAAAAAAAAAAAAAAAAAAAAAAAA'))).toBe(false);
      expect(fs.existsSync(path.join(store, 'overlay-images', 'e'.repeat(64)))).toBe(false);
      // readers are told to reload
      expect(fs.readFileSync(path.join(store, 'overlay-images', 'images.lock')).equals(token)).toBe(false);
      expect((await checkPodmanStore(repo)).problems).toEqual([]);
      expect(await sh(kernel, name(reg, 'test/rich:v1'), 'cat /etc/keep')).toBe('kept\n');
    }, 180_000);

    // podman#4739, verified: podman stacks the store's layer directories itself; kernel overlay reads
    // deletions only as overlay whiteouts, fuse-overlayfs also as OCI .wh.* files. So a store over DUCC's
    // form (--whiteouts keep, what an ingest keeps) is right with fuse-overlayfs only, and record-form
    // layers (what a transaction publishes) cannot carry deletions for podman at all: refused.
    it("DUCC's .wh.* layers: deleted files come back under kernel overlay, stay deleted under fuse-overlayfs; record layers with deletions are refused", async () => {
      const keepRepo = path.join(work, 'repo-keep');
      fs.mkdirSync(keepRepo);
      const r = await runCli([
        'convert',
        `docker://${name(reg, 'test/rich:v1')}`,
        '--repository-dir',
        keepRepo,
        '--no-thin',
        '--json',
        '--whiteouts',
        'keep',
        '--podman-store',
      ]);
      expect(json<{ images: { status: string; podman?: { status: string } }[] }>(r).images.map((i) => [i.status, i.podman?.status])).toEqual([
        ['converted', 'added'],
      ]);
      const keepStore = path.join(keepRepo, STORE_DIR);
      const k = makePodman(path.join(work, 'podman-keep-kernel'), { stores: [keepStore] });
      const f = makePodman(path.join(work, 'podman-keep-fuse'), { stores: [keepStore], fuse: true });
      podmans.push(k, f);
      const script = 'test -e /etc/toremove && echo toremove-back || echo toremove-gone';
      expect(await sh(k, name(reg, 'test/rich:v1'), script)).toBe('toremove-back\n');
      expect(await sh(f, name(reg, 'test/rich:v1'), script)).toBe('toremove-gone\n');

      const recRepo = path.join(work, 'repo-record');
      fs.mkdirSync(recRepo);
      const rr = await runCli([
        'convert',
        `docker://${name(reg, 'test/rich:v1')}`,
        '--repository-dir',
        recRepo,
        '--no-thin',
        '--json',
        '--whiteouts',
        'record',
        '--podman-store',
      ]);
      const img = json<{ images: { status: string; error?: { code: string; message: string } }[] }>(rr).images[0]!;
      expect([img.status, img.error?.code]).toEqual(['failed', 'CVMFS_THIN_PODMAN_RECORD_WHITEOUTS']);
      expect(img.error?.message).toMatch(/keeps its deletions in its record/);
    }, 300_000);
  },
);
