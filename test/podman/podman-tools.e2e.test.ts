/**
 * podman 4.3's other commands on images of the repository's store, for
 * real: `save` (byte for byte what podman saves of the same image loaded
 * with `podman load`), `commit` and `build` FROM a store image (their new
 * images reuse the store's layers), the container's `/` as podman's own
 * unpack makes it, `image mount` (containers/storage 1.43 mounts no image of
 * any additional store: the same refusal for a store podman wrote itself),
 * and `cvmfs-thin rm`. The store is written for a mount point other than the
 * directory it is written in (`--podman-store-root`), and read there (a bind
 * mount), as nodes read /cvmfs/<repository>.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPodmanStore, layerIds, STORE_DIR } from '../../src/convert/podman/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from '../convert/cli.js';
import { buildRichLayers, type RichImage } from '../convert/fixtures.js';
import { type BuiltLayer, buildLayer, skopeoCopy, writeLayout } from '../convert/images.js';
import { makePodman, type Podman, sh } from './podman.js';

const CONFIG = { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] };
const RICH = 'localhost/test/rich:v1';
const OTHER = 'localhost/test/other:v1';

/** name → sha256 of every file in a tar archive (what `podman save` wrote). */
function archiveFiles(file: string, dir: string): Map<string, string> {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('tar', ['-xf', file, '-C', dir]);
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), e.isSymbolicLink() ? `-> ${fs.readlinkSync(p)}` : createHash('sha256').update(fs.readFileSync(p)).digest('hex'));
    }
  };
  walk(dir);
  return out;
}

/** The IDs in a podman's own layers.json (not its additional stores'). */
const ownLayers = (p: Podman): string[] => {
  const f = path.join(p.dir, 'root', 'overlay-layers', 'layers.json');
  return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8') || '[]') as { id: string }[]).map((l) => l.id) : [];
};

describe.skipIf(needs({ root: true, binaries: ['podman', 'runc', 'skopeo', 'tar', 'gzip', 'mount'] }))(
  'podman commit, build, save, image mount and rm on a store image (podman 4.3)',
  () => {
    const work = tempDir('cvmfs-thin-podman-tools-');
    const repo = path.join(work, 'repo');
    const mnt = path.join(work, 'mnt'); // where "the nodes" mount the repository
    const layout = path.join(work, 'layout');
    let rich: RichImage;
    let other: BuiltLayer;
    let node: Podman; // the store as an additional image store
    let loaded: Podman; // the same image loaded normally
    const podmans: Podman[] = [];
    let mounted = false;

    beforeAll(async () => {
      fs.mkdirSync(repo);
      fs.mkdirSync(mnt);
      rich = buildRichLayers(path.join(work, 'rich'), ['gzip', 'gzip', 'gzip']); // docker-archive (podman save's default) takes no zstd
      const st = path.join(work, 'st-other');
      fs.mkdirSync(st);
      fs.writeFileSync(path.join(st, 'other-only'), 'other\n');
      other = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'other');
      writeLayout(layout, 'rich', [{ layers: rich.layers, config: CONFIG }]);
      writeLayout(layout, 'other', [{ layers: [rich.layers[0]!, other], config: { ...CONFIG, Env: [...CONFIG.Env, 'OTHER=1'] } }]);
      for (const [tag, name] of [
        ['rich', RICH],
        ['other', OTHER],
      ] as const) {
        const r = await runCli([
          'convert',
          `oci:${layout}:${tag}`,
          '--repository-dir',
          repo,
          '--name',
          name,
          '--no-thin',
          '--podman-store',
          '--podman-store-root',
          mnt,
          '--json',
        ]);
        expect(
          json<{ images: { status: string; podman?: { status: string } }[] }>(r).images.map((i) => [i.status, i.podman?.status]),
          r.stderr,
        ).toEqual([['converted', 'added']]);
      }
      execFileSync('mount', ['--bind', repo, mnt]);
      mounted = true;
      node = makePodman(path.join(work, 'podman-node'), { stores: [path.join(mnt, STORE_DIR)] });
      loaded = makePodman(path.join(work, 'podman-loaded'));
      podmans.push(node, loaded);
      const archive = path.join(work, 'rich.oci.tar');
      await skopeoCopy(`oci:${layout}:rich`, `oci-archive:${archive}:${RICH}`);
      await loaded.run(['load', '-i', archive]);
    }, 300_000);

    afterAll(async () => {
      for (const p of podmans) await p.destroy();
      if (mounted) execFileSync('umount', [mnt]);
    }, 180_000);

    it('the layers point at the mount point, not at the directory they were written in; the store checks clean there', async () => {
      const layers = JSON.parse(fs.readFileSync(path.join(repo, STORE_DIR, 'overlay-layers', 'layers.json'), 'utf8')) as { id: string }[];
      for (const l of layers)
        expect(fs.readlinkSync(path.join(repo, STORE_DIR, 'overlay', l.id, 'diff'))).toMatch(new RegExp(`^${mnt}/\\.layers/[0-9a-f]{2}/[0-9a-f]{64}/layerfs$`));
      expect(await checkPodmanStore(repo, { storeRoot: mnt })).toEqual({ images: 2, layers: 4, problems: [] });
      const names = (JSON.parse((await node.run(['images', '--format', 'json'])).stdout) as { Names: string[] }[]).flatMap((i) => i.Names).sort();
      expect(names).toEqual([OTHER, RICH]);
    }, 120_000);

    it('podman save of a store image (docker-archive and oci-archive) is byte for byte what podman saves of the image it loaded itself', async () => {
      for (const format of ['docker-archive', 'oci-archive']) {
        const a = path.join(work, `store.${format}.tar`);
        const b = path.join(work, `loaded.${format}.tar`);
        await node.run(['save', '--format', format, '-o', a, RICH]);
        await loaded.run(['save', '--format', format, '-o', b, RICH]);
        const fromStore = archiveFiles(a, path.join(work, `x-store-${format}`));
        const fromLoad = archiveFiles(b, path.join(work, `x-loaded-${format}`));
        expect(fromStore.size).toBeGreaterThan(3);
        expect([...fromStore]).toEqual([...fromLoad]);
      }
      // the layers in it are the image's diff IDs: each tar rebuilt from the repository's files exactly
      const ids = new Set(rich.layers.map((l) => l.diffId.slice(7)));
      const docker = archiveFiles(path.join(work, 'store.docker-archive.tar'), path.join(work, 'x-store-docker-archive'));
      expect([...docker.values()].filter((h) => ids.has(h))).toHaveLength(3);
    }, 300_000);

    it("a container's / is what podman's own unpack gives it (0555, root)", async () => {
      const script = 'busybox stat -c "%a %u:%g" /';
      expect(await sh(loaded, RICH, script)).toBe('555 0:0\n');
      expect(await sh(node, RICH, script)).toBe('555 0:0\n');
    }, 120_000);

    it('podman commit of a container of a store image: the new image reuses the store layers and runs', async () => {
      await sh(node, RICH, 'echo committed > /committed', { keep: 'to-commit' });
      await node.run(['commit', 'to-commit', 'localhost/test/committed:v1']);
      await node.run(['rm', 'to-commit']);
      expect(await sh(node, 'localhost/test/committed:v1', 'cat /committed /etc/keep')).toBe('committed\nkept\n');
      const storeIds = layerIds(rich.layers.map((l) => l.diffId));
      const own = ownLayers(node);
      expect(own.filter((id) => storeIds.includes(id))).toEqual([]);
      // and it can be saved too (a layer of its own over the store's)
      await node.run(['save', '-o', path.join(work, 'committed.tar'), 'localhost/test/committed:v1']);
      expect(archiveFiles(path.join(work, 'committed.tar'), path.join(work, 'x-committed')).size).toBeGreaterThan(4);
    }, 300_000);

    it('podman build FROM a store image with a RUN step', async () => {
      const ctx = path.join(work, 'build');
      fs.mkdirSync(ctx);
      fs.writeFileSync(path.join(ctx, 'Containerfile'), `FROM ${RICH}\nRUN echo built > /built && cp /etc/keep /copied\n`);
      await node.run(['build', '--pull=never', '--network', 'none', '-t', 'localhost/test/built:v1', ctx], { timeoutMs: 300_000 });
      expect(await sh(node, 'localhost/test/built:v1', 'cat /built /copied; test -e /etc/toremove || echo toremove-gone')).toBe('built\nkept\ntoremove-gone\n');
      const storeIds = layerIds(rich.layers.map((l) => l.diffId));
      expect(ownLayers(node).filter((id) => storeIds.includes(id))).toEqual([]);
    }, 300_000);

    it('podman image mount: containers/storage 1.43 mounts no image of an additional store, ours or one podman wrote itself (podman create + podman mount works)', async () => {
      const ours = await node.run(['image', 'mount', RICH], { allowFail: true });
      const podmansOwn = makePodman(path.join(work, 'podman-over-loaded'), { stores: [path.join(loaded.dir, 'root')] });
      podmans.push(podmansOwn);
      const theirs = await podmansOwn.run(['image', 'mount', RICH], { allowFail: true });
      expect([ours.code, ours.stderr.trim()]).toEqual([125, 'Error: layer not known']);
      expect([theirs.code, theirs.stderr.trim()]).toEqual([125, 'Error: layer not known']);
      const id = (await node.run(['create', '--pull', 'never', '--network', 'none', RICH])).stdout.trim();
      const m = (await node.run(['mount', id])).stdout.trim();
      expect(fs.readFileSync(path.join(m, 'etc', 'keep'), 'utf8')).toBe('kept\n');
      await node.run(['umount', id]);
      await node.run(['rm', id]);
    }, 120_000);

    it('cvmfs-thin rm: the image is gone for podman, the image sharing its base layer still runs', async () => {
      expect(await sh(node, OTHER, 'cat /other-only')).toBe('other\n');
      const r = await runCli(['rm', OTHER, '--repository-dir', repo, '--json']);
      expect(r.code, r.stderr).toBe(0);
      const names = (JSON.parse((await node.run(['images', '--format', 'json'])).stdout) as { Names?: string[] }[]).flatMap((i) => i.Names ?? []);
      expect(names).not.toContain(OTHER);
      expect(names).toContain(RICH);
      const gone = await node.run(['run', '--rm', '--pull', 'never', '--network', 'none', OTHER, 'true'], { allowFail: true });
      expect(gone.code).not.toBe(0);
      expect(gone.stderr).toMatch(/image not known|unable to find/i);
      expect(await sh(node, RICH, 'cat /etc/keep')).toBe('kept\n');
      expect((await checkPodmanStore(repo)).problems).toEqual([]);
      expect(fs.existsSync(path.join(repo, '.metadata', 'localhost', 'test', 'other:v1'))).toBe(false);
    }, 120_000);
  },
);
