/**
 * End to end, for real: a multi-layer image built here (whiteouts, an opaque
 * dir, hardlinks, symlinks, devices, a fifo, setuid/setgid, a binary
 * security.capability, user xattrs, owners, long and non-ASCII names; gzip
 * and zstd layers) is pushed to Debian's docker-registry, converted with the
 * CLI, and the converted layers stacked with overlayfs are compared with the
 * oracle (the layers applied in order with GNU tar and OCI whiteout rules).
 * The thin image is pushed back and pulled again. Also from an OCI layout and
 * a docker-archive, with chains/flat, a multi-arch index and token auth.
 */
import fs from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { CvmfsLayers } from '../../src/core/stack/layers.js';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { chainDir, duccChainIds, flatDir, layerRootfs, parseChainMarker } from '../../src/core/cvmfs/layout.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { lgetxattr } from '../../src/core/host/sys.js';
import { parseThinManifest } from '../../src/core/thin/manifest.js';
import { RegistryClient } from '../../src/convert/registry/client.js';
import { needs, tempDir } from '../helpers/env.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { json, runCli } from './cli.js';
import {
  applyLayersOracle,
  buildRichLayers,
  CAP_SETUID_SETGID,
  diffSnapshots,
  mountOverlay,
  type RichImage,
  snapshot,
  type Snapshot,
  UTF8_NAME,
} from './fixtures.js';
import { buildLayer, skopeoCopy, skopeoPull, skopeoPush, writeLayout } from './images.js';
import { systemHost } from '../../src/core/host/host.js';

const REPO = 'unpacked.cern.ch';

interface Summary {
  images: {
    status: string;
    platform: string;
    manifest_digest: string;
    layers: { digest: string; status: string; whiteouts: number; opaques: number }[];
    chains: string[];
    flat: string | null;
    link: string | null;
    thin: { target: string; digest: string } | null;
    error: { message: string; layer?: string; entry?: string } | null;
  }[];
  converted: number;
  skipped: number;
  failed: number;
}

const RUNTIME_CONFIG = {
  Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'],
  Entrypoint: ['/bin/sh', '-c'],
  Cmd: ['echo hello'],
  WorkingDir: '/data',
  User: '1234:5678',
  ExposedPorts: { '8080/tcp': {} },
  Volumes: { '/var/lib/data': {} },
  Labels: { 'org.example.team': 'cvmfs' },
  StopSignal: 'SIGINT',
};

function noWhiteoutNames(dir: string): string[] {
  const bad: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith('.wh.')) bad.push(path.join(d, e.name));
      if (e.isDirectory()) walk(path.join(d, e.name));
    }
  };
  walk(dir);
  return bad;
}

describe.skipIf(needs({ root: 'overlay mounts, chown', binaries: ['docker-registry', 'skopeo', 'tar', 'zstd', 'gzip', 'openssl', 'mount'] }))(
  'convert, end to end (registry, OCI layout, docker-archive)',
  () => {
    const work = tempDir('cvmfs-thin-e2e-');
    let reg: TestRegistry;
    let image: RichImage;
    let oracle: Snapshot;
    const layout = path.join(work, 'layout');
    const mounts: (() => void)[] = [];
    const stackedSnapshot = (repo: string, hexes: string[]): Snapshot => {
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      const umount = mountOverlay(hexes.map((h) => layerRootfs(repo, h)).reverse(), mnt);
      mounts.push(umount);
      try {
        return snapshot(mnt);
      } finally {
        umount();
        mounts.pop();
      }
    };

    const oracleOf = (layers: RichImage['layers'], name: string): Snapshot => {
      const dir = path.join(work, `oracle-${name}`);
      applyLayersOracle(
        layers.map((l) => l.tar),
        dir,
        work,
      );
      return snapshot(dir);
    };

    beforeAll(async () => {
      image = buildRichLayers(work);
      writeLayout(layout, 'v1', [{ layers: image.layers, config: RUNTIME_CONFIG }]);
      const oracleDir = path.join(work, 'oracle');
      applyLayersOracle(
        image.layers.map((l) => l.tar),
        oracleDir,
        work,
      );
      oracle = snapshot(oracleDir);
      reg = await startRegistry();
      await skopeoPush(layout, 'v1', `docker://${reg.host}/test/rich:v1`);
    });
    afterAll(async () => {
      for (const m of mounts.reverse()) {
        try {
          m();
        } catch {
          /* already gone */
        }
      }
      await reg?.stop();
    });

    it('the oracle itself has what the image is made of', () => {
      const e = oracle.entries;
      expect(e.get('etc/toremove')).toBeUndefined();
      expect(e.get('var/cache/dir')).toBeUndefined();
      expect([...e.keys()].filter((k) => k.startsWith('opt/tree/'))).toEqual(['opt/tree/new']);
      expect(e.get('usr/bin/ping')?.xattrs).toEqual([`security.capability=${CAP_SETUID_SETGID.toString('hex')}`]);
      expect(e.get('usr/bin/su')?.mode).toBe(0o4755);
      expect(e.get('dev/sda')?.type).toBe('block');
      expect(e.get('data/owned')).toMatchObject({ uid: 4321, gid: 8765, mode: 0o600 });
      expect(e.get(`data/${UTF8_NAME}`)?.size).toBe('utf-8 name v2\n'.length);
      expect(oracle.links).toEqual([
        ['new/x', 'new/y'],
        ['usr/share/c', 'usr/share/d'],
      ]);
    });

    it('converts from the registry: the stacked layers equal the image, whiteouts are overlay-native, layers carry the marker', async () => {
      const repo = path.join(work, 'repo1');
      fs.mkdirSync(repo);
      const r = await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--repository', REPO, '--json']);
      const s = json<Summary>(r);
      expect(r.code, r.stderr).toBe(0);
      expect(s.images).toHaveLength(1);
      const img = s.images[0]!;
      expect(img.status).toBe('converted');
      expect(img.layers.map((l) => l.status)).toEqual(['unpacked', 'unpacked', 'unpacked']);
      expect(img.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
      expect(img.layers[1]).toMatchObject({ whiteouts: 2, opaques: 1 });
      const hexes = image.layers.map((l) => l.digest.slice(7));

      // layer 2 in overlay form: char 0/0 whiteouts, trusted.overlay.opaque, no .wh.* names anywhere
      const l2 = layerRootfs(repo, hexes[1]!);
      const wo = fs.lstatSync(path.join(l2, 'etc/toremove'));
      expect(wo.isCharacterDevice() && wo.rdev === 0).toBe(true);
      expect(fs.lstatSync(path.join(l2, 'var/cache/dir')).isCharacterDevice()).toBe(true);
      expect(lgetxattr(path.join(l2, 'opt/tree'), 'trusted.overlay.opaque')?.toString()).toBe('y');
      for (const h of hexes) expect(noWhiteoutNames(layerRootfs(repo, h))).toEqual([]);

      // the snapshotter trusts the layers (its own marker check)
      const layers = new CvmfsLayers(
        cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
        path.join(work, 'masks'),
        {
          get: () => undefined,
          put: async () => {},
        },
        systemHost,
      );
      for (const h of hexes)
        expect(await layers.readMarker(repo, h)).toMatchObject({ schema: 'cvmfs-thin/layer', whiteouts: 'overlay', digest: `sha256:${h}` });

      // the oracle: stacked with overlay == applied with OCI semantics
      expect(diffSnapshots(oracle, stackedSnapshot(repo, hexes), ['oracle', 'overlay'])).toEqual([]);

      // DUCC tree: metadata with the exact registry manifest, origin back-links, catalog markers
      const meta = path.join(repo, '.metadata', reg.host, 'test/rich:v1');
      expect(fs.readFileSync(path.join(meta, 'manifest.json')).toString()).toContain(image.layers[0]!.digest);
      expect(JSON.parse(fs.readFileSync(path.join(repo, '.layers', hexes[0]!.slice(0, 2), hexes[0]!, '.metadata/origin.json'), 'utf8'))).toEqual({
        origin: [expect.stringMatching(/^sha256:/)],
      });
      for (const c of [
        '.layers/.cvmfscatalog',
        `.layers/${hexes[0]!.slice(0, 2)}/.cvmfscatalog`,
        `.layers/${hexes[0]!.slice(0, 2)}/${hexes[0]}/.cvmfscatalog`,
      ]) {
        expect(fs.existsSync(path.join(repo, c)), c).toBe(true);
      }
      expect(fs.readdirSync(path.join(repo, '.layers', hexes[0]!.slice(0, 2))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
      expect(img.thin?.target).toBe(`docker://${reg.host}/test/rich_thin:v1`);
    });

    it('pushed the thin image back; pulled again it holds only thin.json and the whole runtime config', async () => {
      const pulled = path.join(work, 'pulled');
      await skopeoPull(`docker://${reg.host}/test/rich_thin:v1`, pulled, 'thin');
      const index = JSON.parse(fs.readFileSync(path.join(pulled, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
      const blob = (d: string) => fs.readFileSync(path.join(pulled, 'blobs/sha256', d.slice(7)));
      const manifest = JSON.parse(blob(index.manifests[0]!.digest).toString()) as {
        layers: { digest: string }[];
        config: { digest: string };
        annotations: Record<string, string>;
      };
      expect(manifest.layers).toHaveLength(1);
      const tar = gunzipSync(blob(manifest.layers[0]!.digest));
      const listing = execFileSync('tar', ['-tvf', '-'], { input: tar }).toString().trim().split('\n');
      expect(listing).toHaveLength(1);
      expect(listing[0]).toMatch(/^-rw-r--r-- 0\/0 .* thin\.json$/);
      const thinJson = execFileSync('tar', ['-xOf', '-', 'thin.json'], { input: tar });
      const m = parseThinManifest(thinJson, { defaultRepository: REPO, allowedRepositories: [REPO] });
      expect(m.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
      expect(m.layers[0]!.url).toBe(`cvmfs://${REPO}/.layers/${image.layers[0]!.digest.slice(7, 9)}/${image.layers[0]!.digest.slice(7)}/layerfs`);
      const config = JSON.parse(blob(manifest.config.digest).toString()) as { config: Record<string, unknown> };
      const { Env, Labels, ...rest } = RUNTIME_CONFIG;
      expect(config.config).toMatchObject(rest);
      expect(config.config['Env']).toEqual([...Env, 'CVMFS_IMAGE=true']);
      expect(config.config['Labels']).toMatchObject({ ...Labels, 'cvmfs-thin.source': `docker://${reg.host}/test/rich:v1` });
      const src = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
      const srcDigest = (await src.getManifest('test/rich', 'v1')).digest;
      expect(manifest.annotations['org.opencontainers.image.base.digest']).toBe(srcDigest);
      expect((config.config['Labels'] as Record<string, string>)['cvmfs-thin.source.digest']).toBe(srcDigest);
    });

    it('a second run finds the image up to date and writes nothing; --force converts again', async () => {
      const repo = path.join(work, 'repo1');
      const before = fs.statSync(path.join(repo, '.metadata', reg.host, 'test/rich:v1', 'manifest.json')).mtimeMs;
      const r = await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--repository', REPO, '--json']);
      const s = json<Summary>(r);
      expect(r.code, r.stderr).toBe(0);
      expect(s).toMatchObject({ skipped: 1, converted: 0, failed: 0 });
      expect(fs.statSync(path.join(repo, '.metadata', reg.host, 'test/rich:v1', 'manifest.json')).mtimeMs).toBe(before);
      const f = json<Summary>(
        await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--repository', REPO, '--json', '--force']),
      );
      expect(f.converted).toBe(1);
      expect(f.images[0]!.layers.map((l) => l.status)).toEqual(['present', 'present', 'present']);
    });

    it('converts the same image from an OCI layout (layers deduplicated) and from a docker-archive (its own uncompressed layers), both equal to the image', async () => {
      const repo = path.join(work, 'repo1');
      const thinLayout = path.join(work, 'thin-layout');
      const r = await runCli([
        'convert',
        `oci:${layout}:v1`,
        '--repository-dir',
        repo,
        '--repository',
        REPO,
        '--name',
        'example.org/rich:v1',
        '--thin',
        `oci:${thinLayout}:rich`,
        '--json',
      ]);
      const s = json<Summary>(r);
      expect(r.code, r.stderr).toBe(0);
      expect(s.images[0]!.layers.map((l) => l.status)).toEqual(['present', 'present', 'present']);
      expect(fs.existsSync(path.join(repo, '.metadata/example.org/rich:v1/manifest.json'))).toBe(true);
      const thinIndex = JSON.parse(fs.readFileSync(path.join(thinLayout, 'index.json'), 'utf8')) as { manifests: { annotations: Record<string, string> }[] };
      expect(thinIndex.manifests[0]!.annotations['org.opencontainers.image.ref.name']).toBe('rich');

      // Docker archives cannot hold zstd layers: the same content with gzip layers
      const gz = buildRichLayers(path.join(work, 'gz'), ['gzip', 'gzip', 'gzip']);
      writeLayout(path.join(work, 'gz-layout'), 'v1', [{ layers: gz.layers, config: RUNTIME_CONFIG }]);
      const archive = path.join(work, 'rich-docker.tar');
      await skopeoCopy(`oci:${path.join(work, 'gz-layout')}:v1`, `docker-archive:${archive}:test/rich:v1`);
      const repo2 = path.join(work, 'repo2');
      fs.mkdirSync(repo2);
      const d = await runCli(['convert', `docker-archive:${archive}`, '--repository-dir', repo2, '--repository', REPO, '--json']);
      const ds = json<Summary>(d);
      expect(d.code, d.stderr).toBe(0);
      const img = ds.images[0]!;
      expect(img.layers.map((l) => l.status)).toEqual(['unpacked', 'unpacked', 'unpacked']);
      // docker save stores uncompressed layers: their digests are the diff ids
      expect(img.layers.map((l) => l.digest)).toEqual(gz.layers.map((l) => l.diffId));
      expect(
        diffSnapshots(
          oracleOf(gz.layers, 'gz'),
          stackedSnapshot(
            repo2,
            img.layers.map((l) => l.digest.slice(7)),
          ),
          ['oracle', 'overlay'],
        ),
      ).toEqual([]);
      // named by the archive's RepoTags (Docker Hub, DUCC's spelling)
      expect(fs.existsSync(path.join(repo2, '.metadata/registry.hub.docker.com/test/rich:v1/manifest.json'))).toBe(true);
      // the thin image went next to the archive, in the same format
      expect(img.thin?.target).toBe(`docker-archive:${path.join(work, 'rich-docker_thin.tar')}:test/rich_thin:v1`);
      const listing = execFileSync('tar', ['-tf', path.join(work, 'rich-docker_thin.tar')]).toString();
      expect(listing).toMatch(/manifest\.json/);
    });

    it('uncompressed layers from an OCI layout', async () => {
      const plain = buildRichLayers(path.join(work, 'plain'), ['none', 'none', 'zstd']);
      const lay = path.join(work, 'plain-layout');
      writeLayout(lay, 'p', [{ layers: plain.layers }]);
      const repo = path.join(work, 'repo3');
      fs.mkdirSync(repo);
      const r = await runCli(['convert', `oci:${lay}:p`, '--repository-dir', repo, '--no-thin', '--json']);
      const s = json<Summary>(r);
      expect(r.code, r.stderr).toBe(0);
      expect(s.images[0]!.thin).toBeNull();
      expect(
        diffSnapshots(
          oracleOf(plain.layers, 'plain'),
          stackedSnapshot(
            repo,
            plain.layers.map((l) => l.digest.slice(7)),
          ),
          ['oracle', 'overlay'],
        ),
      ).toEqual([]);
    });

    it('--chains and --flat build merged trees equal to the image, and the readable link points at the flat tree', async () => {
      const repo = path.join(work, 'repo1');
      const r = await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--repository', REPO, '--chains', '--flat', '--json']);
      const s = json<Summary>(r);
      expect(r.code, r.stderr).toBe(0);
      const img = s.images[0]!;
      expect(img.status).toBe('converted');
      const hexes = image.layers.map((l) => l.digest.slice(7));
      const ids = duccChainIds(hexes);
      expect(img.chains).toEqual(ids.map((id) => chainDir(repo, id)));
      const top = snapshot(chainDir(repo, ids[2]!), (p) => p === '.cvmfscatalog' || p === '.cvmfs-thin-chain.json');
      expect(diffSnapshots(oracle, top, ['oracle', 'chain'])).toEqual([]);
      // each chain's marker: its layers, and the xattrs of its tree (what a publish may drop), its own two files hidden
      const marker = parseChainMarker(fs.readFileSync(path.join(chainDir(repo, ids[2]!), '.cvmfs-thin-chain.json'), 'utf8'), ids[2]!);
      expect(marker?.layers).toEqual(hexes);
      expect(marker?.record.hidden).toEqual(['.cvmfscatalog', '.cvmfs-thin-chain.json']);
      const withXattrs = [...oracle.entries].filter(([, e]) => e.xattrs.length > 0).map(([p]) => p);
      expect(withXattrs.length).toBeGreaterThan(0);
      expect([...new Set(marker!.record.xattrs.map((x) => x.path))].sort()).toEqual(withXattrs.sort());
      expect(parseChainMarker(fs.readFileSync(path.join(chainDir(repo, ids[0]!), '.cvmfs-thin-chain.json'), 'utf8'), ids[0]!)?.layers).toEqual([hexes[0]]);
      // the first chain is layer 1 alone
      const first = snapshot(chainDir(repo, ids[0]!), (p) => p === '.cvmfscatalog');
      expect(first.entries.has('etc/toremove')).toBe(true);
      expect(fs.existsSync(path.join(repo, '.dirty-chains', ids[2]!))).toBe(false);
      // flat: the image plus Apptainer's files
      const cfgHex = JSON.parse(fs.readFileSync(path.join(repo, '.metadata', reg.host, 'test/rich:v1', 'cvmfs-thin.json'), 'utf8')).config_digest.slice(
        7,
      ) as string;
      expect(img.flat).toBe(flatDir(repo, cfgHex));
      const flat = snapshot(img.flat!);
      for (const [p, e] of oracle.entries) expect(flat.entries.get(p), p).toEqual(e);
      expect(fs.readFileSync(path.join(img.flat!, '.singularity.d/env/10-docker2singularity.sh'), 'utf8')).toContain("export LANG='C.UTF-8'");
      const link = path.join(repo, reg.host, 'test/rich:v1');
      expect(img.link).toBe(link);
      expect(fs.readlinkSync(link)).toBe(path.relative(path.dirname(link), img.flat!));
      expect(fs.realpathSync(link)).toBe(img.flat);
    });

    it("--top-chain builds the image's own chain only, from the longest prefix chain of ours there is; a rerun finds it up to date", async () => {
      const repo = path.join(work, 'repo-top');
      fs.mkdirSync(repo);
      const hexes = image.layers.map((l) => l.digest.slice(7));
      const ids = duccChainIds(hexes);
      const conv = async (...extra: string[]) => {
        const r = await runCli([
          'convert',
          `docker://${reg.host}/test/rich:v1`,
          '--repository-dir',
          repo,
          '--no-thin',
          '--json',
          '--log-level',
          'info',
          ...extra,
        ]);
        expect(r.code, r.stderr).toBe(0);
        const built = r.stderr
          .split('\n')
          .filter((l) => l.includes('"chain built"'))
          .map((l) => JSON.parse(l) as { chain: string; from: number });
        return { s: json<Summary>(r).images[0]!, built };
      };
      const first = await conv('--top-chain');
      expect(first.s.chains).toEqual([chainDir(repo, ids[2]!)]);
      expect(first.built).toEqual([expect.objectContaining({ chain: ids[2], from: 0 })]);
      expect(ids.map((id) => fs.existsSync(chainDir(repo, id)))).toEqual([false, false, true]);
      const skip = (p: string) => p === '.cvmfscatalog' || p === '.cvmfs-thin-chain.json';
      expect(diffSnapshots(oracle, snapshot(chainDir(repo, ids[2]!), skip), ['oracle', 'chain'])).toEqual([]);
      // up to date: nothing converted or built again
      const again = await conv('--top-chain');
      expect([again.s.status, again.built]).toEqual(['skipped', []]);
      // every prefix (--chains) adds the two lower chains and keeps the top one
      const all = await conv('--chains');
      expect(all.built.map((b) => b.chain)).toEqual([ids[0], ids[1]]);
      // the top chain gone: built again from the chain of the two lower layers
      fs.rmSync(chainDir(repo, ids[2]!), { recursive: true });
      const rebuilt = await conv('--top-chain', '--force');
      expect(rebuilt.built).toEqual([expect.objectContaining({ chain: ids[2], from: 2 })]);
      expect(diffSnapshots(oracle, snapshot(chainDir(repo, ids[2]!), skip), ['oracle', 'chain'])).toEqual([]);
    });

    it('--whiteouts keep writes DUCC-style layers (plain .wh.* files, no marker); their chains still apply them', async () => {
      const repo = path.join(work, 'repo-keep');
      fs.mkdirSync(repo);
      const r = await runCli([
        'convert',
        `docker://${reg.host}/test/rich:v1`,
        '--repository-dir',
        repo,
        '--whiteouts',
        'keep',
        '--chains',
        '--no-thin',
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      const hexes = image.layers.map((l) => l.digest.slice(7));
      const l2 = layerRootfs(repo, hexes[1]!);
      expect(fs.statSync(path.join(l2, 'etc/.wh.toremove')).isFile()).toBe(true);
      expect(fs.statSync(path.join(l2, 'opt/tree/.wh..wh..opq')).isFile()).toBe(true);
      expect(fs.existsSync(path.join(repo, '.layers', hexes[1]!.slice(0, 2), hexes[1]!, '.metadata/cvmfs-thin-layer.json'))).toBe(false);
      const ids = duccChainIds(hexes);
      expect(
        diffSnapshots(
          oracle,
          snapshot(chainDir(repo, ids[2]!), (p) => p === '.cvmfscatalog' || p === '.cvmfs-thin-chain.json'),
          ['oracle', 'chain'],
        ),
      ).toEqual([]);
      // a rerun takes them as present (no marker needed)
      const again = json<Summary>(
        await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--whiteouts', 'keep', '--no-thin', '--json', '--force']),
      );
      expect(again.images[0]!.layers.map((l) => l.status)).toEqual(['present-foreign', 'present-foreign', 'present-foreign']);
      // --overwrite-layers replaces them with marked overlay layers
      const over = json<Summary>(
        await runCli(['convert', `docker://${reg.host}/test/rich:v1`, '--repository-dir', repo, '--overwrite-layers', '--no-thin', '--json', '--force']),
      );
      expect(over.images[0]!.layers.map((l) => l.status)).toEqual(['unpacked', 'unpacked', 'unpacked']);
      expect(fs.lstatSync(path.join(l2, 'etc/toremove')).isCharacterDevice()).toBe(true);
      expect(fs.existsSync(path.join(l2, 'etc/.wh.toremove'))).toBe(false);
      expect(diffSnapshots(oracle, stackedSnapshot(repo, hexes), ['oracle', 'overlay'])).toEqual([]);
      expect(fs.readdirSync(path.join(repo, '.layers', hexes[1]!.slice(0, 2))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    });

    it('multi-arch index: the host platform by default, --platform, and --all-platforms with a thin index', async () => {
      const mk = (name: string, content: string) => {
        const st = path.join(work, `ma-${name}`);
        fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
        fs.writeFileSync(path.join(st, 'etc/arch'), content);
        return buildLayer(st, 'gzip', path.join(work, 'ma-blobs'), name);
      };
      const amd = mk('amd64', 'amd64\n');
      const arm = mk('arm64', 'arm64\n');
      const ma = path.join(work, 'ma-layout');
      writeLayout(ma, 'multi', [
        { layers: [amd], architecture: 'amd64' },
        { layers: [arm], architecture: 'arm64', variant: 'v8' },
      ]);
      await skopeoPush(ma, 'multi', `docker://${reg.host}/test/multi:1`, { all: true });
      const repo = path.join(work, 'repo-ma');
      fs.mkdirSync(repo);
      const host = json<Summary>(await runCli(['convert', `docker://${reg.host}/test/multi:1`, '--repository-dir', repo, '--no-thin', '--json']));
      expect(host.images.map((i) => i.platform)).toEqual([process.arch === 'arm64' ? 'linux/arm64/v8' : 'linux/amd64']);
      const armRun = json<Summary>(
        await runCli(['convert', `docker://${reg.host}/test/multi:1`, '--repository-dir', repo, '--platform', 'linux/arm64', '--no-thin', '--json']),
      );
      expect(armRun.images[0]!.layers.map((l) => l.digest)).toEqual([arm.digest]);
      const bad = await runCli(['convert', `docker://${reg.host}/test/multi:1`, '--repository-dir', repo, '--platform', 'linux/s390x', '--json']);
      expect(bad.code).toBe(1);
      expect(json<Summary>(bad).images[0]!.error?.message).toMatch(/no image for platform linux\/s390x \(available: linux\/amd64, linux\/arm64\/v8\)/);
      const all = await runCli(['convert', `docker://${reg.host}/test/multi:1`, '--repository-dir', repo, '--all-platforms', '--json', '--force']);
      const as = json<Summary>(all);
      expect(all.code, all.stderr).toBe(0);
      expect(as.images.map((i) => i.platform).sort()).toEqual(['linux/amd64', 'linux/arm64/v8']);
      expect(fs.existsSync(path.join(repo, '.metadata/.multiarch/linux-arm64-v8', reg.host, 'test/multi:1/manifest.json'))).toBe(true);
      expect(fs.existsSync(path.join(repo, '.metadata/.multiarch/linux-amd64', reg.host, 'test/multi:1/manifest.json'))).toBe(true);
      const c = new RegistryClient({ registry: reg.host, credentials: null, log: silentLogger() });
      const thin = await c.getManifest('test/multi_thin', '1');
      const idx = JSON.parse(thin.bytes.toString()) as { mediaType: string; manifests: { platform: { architecture: string } }[] };
      expect(idx.mediaType).toBe('application/vnd.oci.image.index.v1+json');
      expect(idx.manifests.map((m) => m.platform.architecture).sort()).toEqual(['amd64', 'arm64']);
    });
  },
);

describe.skipIf(needs({ binaries: ['docker-registry', 'skopeo', 'tar', 'gzip', 'openssl'] }))('convert with a token-auth registry', () => {
  const work = tempDir('cvmfs-thin-e2e-auth-');
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ tokenAuth: { users: { bob: 'pw' } } });
    const st = path.join(work, 'stage');
    fs.mkdirSync(path.join(st, 'bin'), { recursive: true });
    fs.copyFileSync('/bin/busybox', path.join(st, 'bin/busybox'));
    const l = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'l');
    writeLayout(path.join(work, 'layout'), 'v1', [{ layers: [l] }]);
    await skopeoPush(path.join(work, 'layout'), 'v1', `docker://${reg.host}/private/app:v1`, { creds: 'bob:pw' });
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('converts and pushes with --creds; without credentials the error says what to do', async () => {
    const repo = path.join(work, 'repo');
    fs.mkdirSync(repo);
    const denied = await runCli(['convert', `docker://${reg.host}/private/app:v1`, '--repository-dir', repo, '--json']);
    expect(denied.code).toBe(1);
    expect(json<Summary>(denied).images[0]!.error?.message).toMatch(/HTTP 401.*--creds/);
    const ok = await runCli([
      'convert',
      `docker://${reg.host}/private/app:v1`,
      '--repository-dir',
      repo,
      '--creds',
      'bob:pw',
      '--dest-creds',
      'bob:pw',
      '--json',
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    const s = json<Summary>(ok);
    expect(s.images[0]!.thin?.target).toBe(`docker://${reg.host}/private/app_thin:v1`);
    expect(reg.tokenRequests.some((t) => t.account === 'bob' && t.scopes.includes('repository:private/app_thin:pull,push'))).toBe(true);
    // credentials from a docker config file work the same
    const cfgDir = path.join(work, 'dockercfg');
    fs.mkdirSync(cfgDir);
    fs.writeFileSync(path.join(cfgDir, 'config.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from('bob:pw').toString('base64') } } }));
    const viaCfg = await runCli(['convert', `docker://${reg.host}/private/app:v1`, '--repository-dir', repo, '--json', '--force'], {
      env: { DOCKER_CONFIG: cfgDir },
    });
    expect(viaCfg.code, viaCfg.stderr).toBe(0);
  });
});
