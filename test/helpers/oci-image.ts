/**
 * Builds small container images for tests, independently of the code under
 * test (tar-stream + node:zlib): OCI image-layout archives for
 * `ctr image import` / labelpull, docker-archive tars for `docker load`.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';

export type TarEntry =
  | { path: string; type?: 'file'; content: string | Buffer; mode?: number; uid?: number; gid?: number }
  | { path: string; type: 'dir'; mode?: number; uid?: number; gid?: number }
  | { path: string; type: 'symlink'; target: string }
  | { path: string; type: 'link'; target: string };

export interface BuiltLayer {
  raw: Buffer; // uncompressed tar
  blob: Buffer; // as stored in the image
  digest: string; // of blob
  diffId: string; // of raw
  mediaType: string;
}

export interface BuiltImage {
  name: string;
  layers: BuiltLayer[];
  config: Buffer;
  configDigest: string;
  manifest: Buffer;
  manifestDigest: string;
}

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const p = tar.pack();
  const chunks: Buffer[] = [];
  p.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((r) => p.on('end', () => r()));
  for (const e of entries) {
    const common = { name: e.path, mtime: new Date(0), uid: 'uid' in e ? (e.uid ?? 0) : 0, gid: 'gid' in e ? (e.gid ?? 0) : 0 };
    if (e.type === 'dir') p.entry({ ...common, type: 'directory', mode: e.mode ?? 0o755 });
    else if (e.type === 'symlink') p.entry({ ...common, type: 'symlink', linkname: e.target, mode: 0o777 });
    else if (e.type === 'link') p.entry({ ...common, type: 'link', linkname: e.target, mode: 0o644 });
    else p.entry({ ...common, type: 'file', mode: e.mode ?? 0o644 }, typeof e.content === 'string' ? Buffer.from(e.content) : e.content);
  }
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** /bin/busybox (from busybox-static) with a few applets and the usual top-level dirs. */
export function busyboxEntries(salt = ''): TarEntry[] {
  const bb = readFileSync('/bin/busybox');
  const applets = ['sh', 'ls', 'cat', 'echo', 'sleep', 'id', 'true', 'test', 'stat', 'touch', 'rm', 'mkdir', 'env', 'wc', 'sync'];
  return [
    { path: 'bin/', type: 'dir' },
    { path: 'bin/busybox', content: bb, mode: 0o755 },
    ...applets.map((a) => ({ path: `bin/${a}`, type: 'symlink' as const, target: 'busybox' })),
    ...['etc/', 'proc/', 'sys/', 'dev/', 'root/', 'var/'].map((d) => ({ path: d, type: 'dir' as const })),
    { path: 'tmp/', type: 'dir', mode: 0o1777 },
    { path: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\n' },
    ...(salt ? [{ path: 'etc/salt', content: `${salt}\n` }] : []),
  ];
}

export async function buildImage(name: string, layers: TarEntry[][], opts: { gzip?: boolean; config?: Record<string, unknown> } = {}): Promise<BuiltImage> {
  const built: BuiltLayer[] = [];
  for (const entries of layers) {
    const raw = await tarOf(entries);
    const blob = opts.gzip === false ? raw : gzipSync(raw);
    built.push({
      raw,
      blob,
      digest: sha(blob),
      diffId: sha(raw),
      mediaType: opts.gzip === false ? 'application/vnd.oci.image.layer.v1.tar' : 'application/vnd.oci.image.layer.v1.tar+gzip',
    });
  }
  const config = Buffer.from(
    JSON.stringify({
      created: '1970-01-01T00:00:00Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'], WorkingDir: '/', ...(opts.config ?? {}) },
      rootfs: { type: 'layers', diff_ids: built.map((l) => l.diffId) },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: built.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.blob.length })),
    }),
  );
  return { name, layers: built, config, configDigest: sha(config), manifest, manifestDigest: sha(manifest) };
}

/** An OCI image layout as a tar (what `ctr image import` and labelpull read). */
export async function writeOciArchive(file: string, img: BuiltImage): Promise<void> {
  const tag = img.name.split('/').pop()!.split(':')[1] ?? 'latest';
  const index = {
    schemaVersion: 2,
    manifests: [
      {
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: img.manifestDigest,
        size: img.manifest.length,
        annotations: { 'io.containerd.image.name': img.name, 'org.opencontainers.image.ref.name': tag },
        platform: { architecture: 'amd64', os: 'linux' },
      },
    ],
  };
  const blobs = new Map<string, Buffer>([
    [img.configDigest, img.config],
    [img.manifestDigest, img.manifest],
  ]);
  for (const l of img.layers) blobs.set(l.digest, l.blob);
  const entries: TarEntry[] = [
    { path: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' },
    { path: 'index.json', content: JSON.stringify(index) },
    { path: 'blobs/', type: 'dir' },
    { path: 'blobs/sha256/', type: 'dir' },
    ...[...blobs].map(([d, b]) => ({ path: `blobs/sha256/${d.slice(7)}`, content: b })),
  ];
  writeFileSync(file, await tarOf(entries));
}

/** `docker save` format (manifest.json + uncompressed layer tars): `docker load` reads it. */
export async function writeDockerArchive(file: string, img: BuiltImage): Promise<void> {
  const layerPaths = img.layers.map((l) => `${l.diffId.slice(7)}/layer.tar`);
  const manifest = [{ Config: `${img.configDigest.slice(7)}.json`, RepoTags: [img.name], Layers: layerPaths }];
  const entries: TarEntry[] = [
    { path: 'manifest.json', content: JSON.stringify(manifest) },
    { path: `${img.configDigest.slice(7)}.json`, content: img.config },
    ...img.layers.flatMap((l) => [
      { path: `${l.diffId.slice(7)}/`, type: 'dir' as const },
      { path: `${l.diffId.slice(7)}/layer.tar`, content: l.raw },
    ]),
  ];
  writeFileSync(file, await tarOf(entries));
}

/**
 * Put a layer into a CVMFS-style repository the way DUCC does: plain extraction,
 * OCI `.wh.*` entries stay ordinary files, no marker.
 */
export function unpackDuccStyle(repoRoot: string, layer: BuiltLayer): string {
  const hex = layer.digest.slice(7);
  const dir = path.join(repoRoot, '.layers', hex.slice(0, 2), hex, 'layerfs');
  mkdirSync(dir, { recursive: true });
  execFileSync('tar', ['-x', '-C', dir, '--same-owner', '-p'], { input: layer.raw });
  return dir;
}

/** A one-layer image holding only thin.json. */
export async function buildThinImage(name: string, thinJsonText: string): Promise<BuiltImage> {
  return buildImage(name, [[{ path: 'thin.json', content: thinJsonText }]], { config: { Env: ['PATH=/bin', 'CVMFS_IMAGE=true'] } });
}
