import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { parseThinManifest } from '../../src/core/thin/manifest.js';
import { authKeyToRegistry, lookupCredentials, parseChallenges, parseCreds } from '../../src/convert/registry/auth.js';
import { retryDelay } from '../../src/convert/registry/client.js';
import { formatPlatform, parsePlatform, selectPlatform } from '../../src/convert/image/platform.js';
import { layerCompression, parseConfig, parseManifest } from '../../src/convert/image/types.js';
import {
  defaultThinReference,
  duccImageName,
  familiarName,
  formatImageReference,
  parseDockerReference,
  parseImageReference,
  parseWishImage,
  tagGlob,
} from '../../src/convert/reference.js';
import { parseDuration, splitCommand } from '../../src/convert/util.js';
import { formatOutput, outputTarget, parseRecipe } from '../../src/convert/wishlist.js';
import { buildThinImage } from '../../src/convert/thin.js';
import { ConvertError } from '../../src/convert/errors.js';
import { UnsafeTarError } from '../../src/core/tar/index.js';
import { RecordingHost } from '../helpers/recording-host.js';

describe('docker references', () => {
  it('normalises like distribution/reference', () => {
    expect(parseDockerReference('busybox')).toEqual({ registry: 'docker.io', repository: 'library/busybox', tag: 'latest', digest: undefined });
    expect(parseDockerReference('user/app:1.2')).toMatchObject({ registry: 'docker.io', repository: 'user/app', tag: '1.2' });
    expect(parseDockerReference('localhost:5000/a/b/c:t')).toMatchObject({ registry: 'localhost:5000', repository: 'a/b/c', tag: 't' });
    expect(parseDockerReference('registry.hub.docker.com/library/centos:7')).toMatchObject({ registry: 'docker.io', repository: 'library/centos' });
    const d = `sha256:${'a'.repeat(64)}`;
    expect(parseDockerReference(`ghcr.io/x/y@${d}`)).toMatchObject({ registry: 'ghcr.io', repository: 'x/y', tag: undefined, digest: d });
    expect(parseDockerReference(`ghcr.io/x/y:t@${d}`)).toMatchObject({ tag: 't', digest: d });
  });
  it('refuses bad references with a reason', () => {
    expect(() => parseDockerReference('Busybox')).toThrow(/lower case/);
    expect(() => parseDockerReference('a//b')).toThrow(/empty repository path component/);
    expect(() => parseDockerReference('a:bad tag')).toThrow(/white space/);
    expect(() => parseDockerReference('a@sha256:123')).toThrow(/digest/);
    expect(() => parseDockerReference('a:-x')).toThrow(/tag/);
  });
  it('prints familiar and DUCC names', () => {
    expect(familiarName(parseDockerReference('busybox'))).toBe('busybox:latest');
    expect(duccImageName(parseDockerReference('busybox:1'))).toBe('registry.hub.docker.com/library/busybox:1');
    expect(duccImageName(parseDockerReference('127.0.0.1:5000/a/b:c'))).toBe('127.0.0.1:5000/a/b:c');
    expect(defaultThinReference(parseDockerReference('h.io/a/b:c'))).toEqual({ registry: 'h.io', repository: 'a/b_thin', tag: 'c' });
    const d = `sha256:${'b'.repeat(64)}`;
    expect(defaultThinReference(parseDockerReference(`h.io/a@${d}`)).tag).toBe(`sha256-${'b'.repeat(64)}`);
  });
});

describe('transport syntax', () => {
  it('parses the four transports', () => {
    expect(parseImageReference('docker://h.io/a:1')).toMatchObject({ transport: 'docker', ref: { registry: 'h.io', repository: 'a', tag: '1' } });
    expect(parseImageReference('oci:/x/lay:v1')).toEqual({ transport: 'oci', path: '/x/lay', tag: 'v1' });
    expect(parseImageReference('oci:/x/lay')).toEqual({ transport: 'oci', path: '/x/lay', tag: undefined });
    expect(parseImageReference('oci-archive:/x/a.tar:t')).toEqual({ transport: 'oci-archive', path: '/x/a.tar', tag: 't' });
    expect(parseImageReference('docker-archive:/x/a.tar:busybox:1')).toMatchObject({
      transport: 'docker-archive',
      path: '/x/a.tar',
      ref: { repository: 'library/busybox', tag: '1' },
    });
    expect(parseImageReference('docker-archive:/x/a.tar:@2')).toEqual({ transport: 'docker-archive', path: '/x/a.tar', index: 2 });
    expect(formatImageReference(parseImageReference('docker-archive:/x/a.tar:busybox:1'))).toBe('docker-archive:/x/a.tar:busybox:1');
  });
  it('explains what is wrong', () => {
    expect(() => parseImageReference('busybox')).toThrow(/no transport/);
    expect(() => parseImageReference('docker:busybox')).toThrow(/docker:\/\//);
    expect(() => parseImageReference('ftp://x')).toThrow(/unknown transport "ftp"/);
    expect(() => parseImageReference('oci:')).toThrow(/empty path/);
    expect(() => parseImageReference('docker-archive:/a.tar:x@sha256:' + 'a'.repeat(64))).toThrow(/digest/);
  });
});

describe('DUCC wishlist syntax', () => {
  it('parses recipe images and globs', () => {
    const w = parseWishImage('https://registry.hub.docker.com/atlas/analysisbase:21.2.1*');
    expect(w).toMatchObject({
      scheme: 'https',
      wildcard: true,
      host: 'registry.hub.docker.com',
      ref: { registry: 'docker.io', repository: 'atlas/analysisbase', tag: '21.2.1*' },
    });
    expect(parseWishImage('http://127.0.0.1:5000/a/b:c').scheme).toBe('http');
    expect(() => parseWishImage('centos:7')).toThrow(/identify the registry/);
    const re = tagGlob('21.2.1*');
    expect(['21.2.10', '21.2.100-20191127', '21.2.1'].every((t) => re.test(t))).toBe(true);
    expect(re.test('21.3.10')).toBe(false);
    expect(re.test('x21.2.10')).toBe(false);
    expect(tagGlob('a.b').test('aXb')).toBe(false);
  });
  it('formats output names like DUCC', () => {
    const w = parseWishImage('https://registry.hub.docker.com/library/centos:centos7');
    expect(formatOutput(undefined, w, w.ref)).toBe('https://registry.hub.docker.com/library/centos_thin:centos7');
    expect(formatOutput('https://gitlab-registry.cern.ch/unpacked/sync/$(image)', w, w.ref)).toBe(
      'https://gitlab-registry.cern.ch/unpacked/sync/library/centos:centos7',
    );
    expect(outputTarget('http://127.0.0.1:5000/x/y:1')).toMatchObject({
      ref: { transport: 'docker', ref: { registry: '127.0.0.1:5000', repository: 'x/y', tag: '1' } },
      insecureRegistry: '127.0.0.1:5000',
    });
    expect(outputTarget('oci:/tmp/l:t').ref).toEqual({ transport: 'oci', path: '/tmp/l', tag: 't' });
  });
  it('validates recipes, naming the bad key or line', () => {
    const ok = parseRecipe("version: 1\nuser: u\ncvmfs_repo: 'unpacked.cern.ch'\noutput_format: 'x'\ninput:\n  - 'https://h.io/a/b:1'\n", 'r.yaml');
    expect(ok).toMatchObject({ version: 1, user: 'u', cvmfs_repo: 'unpacked.cern.ch', input: ['https://h.io/a/b:1'] });
    expect(() => parseRecipe('version: 2\ncvmfs_repo: a.b\ninput: [https://h.io/a:1]\n', 'r.yaml')).toThrow(/version: only version 1/);
    expect(() => parseRecipe('version: 1\ncvmfs_repo: a.b\ninput: [https://h.io/a:1]\nimput: []\n', 'r.yaml')).toThrow(/unknown key\(s\) "imput"/);
    expect(() => parseRecipe('version: 1\ncvmfs_repo: Not_A_Repo\ninput: [https://h.io/a:1]\n', 'r.yaml')).toThrow(/cvmfs_repo/);
    expect(() => parseRecipe('version: 1\ncvmfs_repo: a.b\ninput: [https://h.io/a:1, centos]\n', 'r.yaml')).toThrow(/input\[1\].*registry/);
    expect(() => parseRecipe('version: 1\n  bad: [\n', 'r.yaml')).toThrow(/not valid YAML/);
    expect(() => parseRecipe('version: 1\nversion: 1\ncvmfs_repo: a.b\ninput: [https://h.io/a:1]\n', 'r.yaml')).toThrow(/YAML/);
  });
});

describe('helpers', () => {
  it('parses durations', () => {
    expect(parseDuration('7')).toBe(7 * 86_400_000);
    expect(parseDuration('1d12h')).toBe(36 * 3_600_000);
    expect(parseDuration('90m')).toBe(5_400_000);
    expect(parseDuration('0')).toBe(0);
    expect(parseDuration('500ms')).toBe(500);
    expect(() => parseDuration('soon')).toThrow(/not a duration/);
    expect(() => parseDuration('5x')).toThrow(/not a duration/);
  });
  it('splits commands without a shell', () => {
    expect(splitCommand('cvmfs_server transaction {repository}')).toEqual(['cvmfs_server', 'transaction', '{repository}']);
    expect(splitCommand(`a 'b c' "d \\"e\\"" f\\ g $(rm)`)).toEqual(['a', 'b c', 'd "e"', 'f g', '$(rm)']);
    expect(() => splitCommand("a 'b")).toThrow(/unbalanced/);
    expect(() => splitCommand('  ')).toThrow(/empty/);
  });
  it('honours Retry-After and caps the backoff', () => {
    expect(retryDelay(0, '3', 100)).toBe(3000);
    expect(retryDelay(0, '9999', 100)).toBe(60_000);
    const d = retryDelay(3, null, 100);
    expect(d).toBeGreaterThanOrEqual(600);
    expect(d).toBeLessThanOrEqual(1000);
    expect(retryDelay(0, new Date(Date.now() + 2000).toUTCString(), 100)).toBeLessThanOrEqual(2000);
  });
  it('parses WWW-Authenticate challenges', () => {
    expect(parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' } },
    ]);
    expect(parseChallenges('Basic realm="Registry Realm"')).toEqual([{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
  });
  it('reads credentials from docker config files', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-auth-'));
    try {
      const f = path.join(dir, 'config.json');
      writeFileSync(
        f,
        JSON.stringify({
          auths: {
            'https://index.docker.io/v1/': { auth: Buffer.from('hubuser:hubpass').toString('base64') },
            'http://127.0.0.1:5000/v2/': { username: 'u', password: 'p' },
            'tok.example.org': { identitytoken: 'refresh' },
          },
        }),
      );
      expect(await lookupCredentials('docker.io', new RecordingHost(), [f])).toEqual({ username: 'hubuser', password: 'hubpass' });
      expect(await lookupCredentials('127.0.0.1:5000', new RecordingHost(), [f])).toEqual({ username: 'u', password: 'p' });
      expect(await lookupCredentials('tok.example.org', new RecordingHost(), [f])).toMatchObject({ identityToken: 'refresh' });
      expect(await lookupCredentials('other.io', new RecordingHost(), [f])).toBeNull();
      // credential helpers run through the host, the server on their stdin; a failing one means no credentials
      const helperHost = new RecordingHost();
      helperHost.execHandler = (file, args, o) => ({
        code: 0,
        stdout: JSON.stringify({ Username: 'h', Secret: `${file} ${args.join(' ')} ${o?.input}` }),
        stderr: '',
      });
      writeFileSync(f, JSON.stringify({ credHelpers: { 'helped.example.org': 'fake' }, credsStore: 'store' }));
      expect(await lookupCredentials('helped.example.org', helperHost, [f])).toEqual({
        username: 'h',
        password: 'docker-credential-fake get helped.example.org',
      });
      expect(await lookupCredentials('docker.io', helperHost, [f])).toEqual({
        username: 'h',
        password: 'docker-credential-store get https://index.docker.io/v1/',
      });
      helperHost.execHandler = () => ({ code: 1, stdout: '', stderr: 'no such helper' });
      expect(await lookupCredentials('helped.example.org', helperHost, [f])).toBeNull();
      expect(authKeyToRegistry('https://registry-1.docker.io/v2/')).toBe('docker.io');
      expect(parseCreds('a:b:c')).toEqual({ username: 'a', password: 'b:c' });
      expect(() => parseCreds('nocolon')).toThrow(/USERNAME:PASSWORD/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('manifests and platforms', () => {
  const d = (c: string) => `sha256:${c.repeat(64)}`;
  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d('1'), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d('2'), size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d('3'), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v6' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d('4'), size: 1, platform: { os: 'unknown', architecture: 'unknown' } },
    ],
  };
  const raw = { bytes: Buffer.from(JSON.stringify(index)), mediaType: 'application/vnd.oci.image.index.v1+json', digest: d('f') };
  it('selects platforms', () => {
    const p = parseManifest(raw, 'test');
    if (p.kind !== 'index') throw new Error('want index');
    expect(selectPlatform(p.index, parsePlatform('linux/amd64'), 'x').digest).toBe(d('1'));
    expect(selectPlatform(p.index, parsePlatform('linux/aarch64'), 'x').digest).toBe(d('2'));
    expect(selectPlatform(p.index, parsePlatform('linux/arm64/v8'), 'x').digest).toBe(d('2'));
    expect(() => selectPlatform(p.index, parsePlatform('linux/arm/v7'), 'img')).toThrow(
      /no image for platform linux\/arm\/v7 \(available: linux\/amd64, linux\/arm64\/v8, linux\/arm\/v6\); choose one with --platform/,
    );
    expect(() => parsePlatform('linux')).toThrow(/OS\/ARCH/);
    expect(formatPlatform({ os: 'linux', architecture: 'arm', variant: 'v7' })).toBe('linux/arm/v7');
  });
  it('refuses what is not an image, naming the field', () => {
    expect(() => parseManifest({ ...raw, bytes: Buffer.from('{"schemaVersion":1}') }, 'm')).toThrow(/schema 1/);
    expect(() =>
      parseManifest(
        {
          ...raw,
          bytes: Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"x","size":1},"layers":[]}'),
        },
        'm',
      ),
    ).toThrow(/m.config.digest/);
    expect(() => parseManifest({ ...raw, bytes: Buffer.from('{"schemaVersion":2,"a":1,"a":2}') }, 'm')).toThrow(/duplicate key/);
    expect(() => parseConfig(Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [d('1')] } })), 'cfg', 2)).toThrow(
      /1 entries but the manifest lists 2 layers/,
    );
    expect(() => layerCompression('application/vnd.oci.image.layer.v1.tar+gzip+encrypted', 'layer x')).toThrow(/encrypted/);
    expect(() => layerCompression('application/vnd.cncf.helm.chart.content.v1.tar+gzip', 'layer x')).toThrow(/layer x: media type .* is not an image layer/);
    expect(layerCompression('application/vnd.docker.image.rootfs.diff.tar.gzip', 'l')).toBe('gzip');
    expect(layerCompression('application/octet-stream', 'l')).toBe('auto');
  });
});

describe('errors name image, layer and entry', () => {
  it('wraps tar refusals', () => {
    const e = ConvertError.wrap(new UnsafeTarError('../etc/passwd', 'path-escape', 'leaves the destination'), {
      image: 'docker://h/a:1',
      layer: '2/3 sha256:abc',
    });
    expect(e.message).toBe('image docker://h/a:1: layer 2/3 sha256:abc: entry "../etc/passwd": leaves the destination (path-escape)');
    expect(e.entry).toBe('../etc/passwd');
    expect(e.kind).toBe('invalid-argument');
  });
});

describe('thin image', () => {
  it('is one thin.json layer with the full runtime config, deterministic', async () => {
    const hex = 'c'.repeat(64);
    const input = {
      origin: 'docker://h.io/a:1',
      manifestDigest: `sha256:${'d'.repeat(64)}`,
      config: {
        created: '2024-01-01T00:00:00Z',
        architecture: 'amd64',
        os: 'linux',
        config: {
          Env: ['PATH=/bin', 'CVMFS_IMAGE=false'],
          Entrypoint: ['/entry'],
          Cmd: ['run'],
          WorkingDir: '/w',
          User: '1000:1000',
          ExposedPorts: { '80/tcp': {} },
          Volumes: { '/data': {} },
          Labels: { a: 'b' },
          StopSignal: 'SIGINT',
        },
        rootfs: { type: 'layers', diff_ids: [`sha256:${'e'.repeat(64)}`] },
      },
      layers: [hex],
      repository: 'unpacked.cern.ch',
      platform: { os: 'linux', architecture: 'amd64' },
    };
    const a = await buildThinImage(input);
    const b = await buildThinImage(input);
    expect(a.manifest.digest).toBe(b.manifest.digest);
    const cfg = JSON.parse(a.config.bytes.toString()) as { config: Record<string, unknown>; rootfs: { diff_ids: string[] } };
    expect(cfg.config).toMatchObject({
      Env: ['PATH=/bin', 'CVMFS_IMAGE=true'],
      Entrypoint: ['/entry'],
      Cmd: ['run'],
      WorkingDir: '/w',
      User: '1000:1000',
      ExposedPorts: { '80/tcp': {} },
      Volumes: { '/data': {} },
      StopSignal: 'SIGINT',
      Labels: { a: 'b', 'cvmfs-thin.source': 'docker://h.io/a:1', 'cvmfs-thin.source.digest': input.manifestDigest },
    });
    expect(cfg.rootfs.diff_ids).toEqual([a.layers[0]!.diffId]);
    const tar = gunzipSync(a.layers[0]!.bytes);
    expect(tar.equals(a.layers[0]!.tar)).toBe(true);
    // one entry: thin.json, mode 0644, uid/gid 0
    expect(tar.subarray(0, 9).toString()).toBe('thin.json');
    expect(Number.parseInt(tar.subarray(100, 107).toString(), 8)).toBe(0o644);
    expect(Number.parseInt(tar.subarray(108, 115).toString(), 8)).toBe(0);
    expect(Number.parseInt(tar.subarray(116, 123).toString(), 8)).toBe(0);
    // stamped with the image's creation time
    expect(Number.parseInt(tar.subarray(136, 147).toString(), 8)).toBe(Date.parse('2024-01-01T00:00:00Z') / 1000);
    const size = Number.parseInt(tar.subarray(124, 135).toString(), 8);
    expect(tar.subarray(512 + 512 + Math.ceil(size / 512) * 512, 512 + 512 + Math.ceil(size / 512) * 512 + 512).every((x) => x === 0)).toBe(true);
    const m = parseThinManifest(tar.subarray(512, 512 + size), { defaultRepository: 'unpacked.cern.ch', allowedRepositories: ['unpacked.cern.ch'] });
    expect(m.layers).toEqual([
      {
        digest: `sha256:${hex}`,
        hex,
        repository: 'unpacked.cern.ch',
        path: `.layers/cc/${hex}/layerfs`,
        url: `cvmfs://unpacked.cern.ch/.layers/cc/${hex}/layerfs`,
      },
    ]);
    expect(m.origin).toBe('docker://h.io/a:1');
    const man = JSON.parse(a.manifest.bytes.toString()) as { annotations: Record<string, string> };
    expect(man.annotations['org.opencontainers.image.base.digest']).toBe(input.manifestDigest);
  });
});
