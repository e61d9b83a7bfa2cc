/**
 * Test images built by the tests themselves: layers made with GNU tar (PAX,
 * xattrs, numeric owners) from staging directories, compressed with gzip or
 * zstd, written into an OCI image layout by this small writer (independent
 * of the converter's code), pushed with skopeo.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export type Compression = 'gzip' | 'zstd' | 'none';

export interface BuiltLayer {
  file: string;
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
  compression: Compression;
  /** The uncompressed tar. */
  tar: string;
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** tar a staging directory (GNU tar, PAX, all xattrs, numeric owners, sorted, fixed mtime for entries that have none). */
export function tarDirectory(staging: string, out: string): void {
  execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', staging, '-cf', out, '.'], {
    stdio: 'inherit',
  });
}

export function compressLayer(tarFile: string, compression: Compression, outDir: string): BuiltLayer {
  const tar = fs.readFileSync(tarFile);
  const diffId = sha(tar);
  let file = tarFile;
  if (compression === 'gzip') {
    file = `${tarFile}.gz`;
    execFileSync('sh', ['-c', 'gzip -n -c "$1" > "$2"', 'sh', tarFile, file]);
  } else if (compression === 'zstd') {
    file = `${tarFile}.zst`;
    execFileSync('zstd', ['-q', '-f', '-3', tarFile, '-o', file]);
  }
  const blob = fs.readFileSync(file);
  const mediaType =
    compression === 'gzip'
      ? 'application/vnd.oci.image.layer.v1.tar+gzip'
      : compression === 'zstd'
        ? 'application/vnd.oci.image.layer.v1.tar+zstd'
        : 'application/vnd.oci.image.layer.v1.tar';
  void outDir;
  return { file, digest: sha(blob), diffId, size: blob.length, mediaType, compression, tar: tarFile };
}

export function buildLayer(staging: string, compression: Compression, workDir: string, name: string): BuiltLayer {
  fs.mkdirSync(workDir, { recursive: true });
  const t = path.join(workDir, `${name}.tar`);
  tarDirectory(staging, t);
  return compressLayer(t, compression, workDir);
}

export interface ImageSpec {
  layers: BuiltLayer[];
  architecture?: string;
  os?: string;
  variant?: string;
  config?: Record<string, unknown>;
}

function putBlob(layout: string, data: Buffer): { digest: string; size: number } {
  const digest = sha(data);
  const dir = path.join(layout, 'blobs', 'sha256');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, digest.slice(7)), data);
  return { digest, size: data.length };
}

function copyBlob(layout: string, file: string, digest: string): void {
  const dir = path.join(layout, 'blobs', 'sha256');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(file, path.join(dir, digest.slice(7)));
}

export interface WrittenImage {
  manifestDigest: string;
  configDigest: string;
  manifest: Buffer;
  config: Buffer;
}

export function writeImage(layout: string, spec: ImageSpec): WrittenImage {
  for (const l of spec.layers) copyBlob(layout, l.file, l.digest);
  const config = Buffer.from(
    JSON.stringify({
      created: '2024-01-02T03:04:05Z',
      architecture: spec.architecture ?? 'amd64',
      os: spec.os ?? 'linux',
      ...(spec.variant ? { variant: spec.variant } : {}),
      config: spec.config ?? { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: spec.layers.map((l) => l.diffId) },
      history: spec.layers.map(() => ({ created: '2024-01-02T03:04:05Z', created_by: 'test' })),
    }),
  );
  const c = putBlob(layout, config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: c.digest, size: c.size },
      layers: spec.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  const m = putBlob(layout, manifest);
  return { manifestDigest: m.digest, configDigest: c.digest, manifest, config };
}

/** Write an OCI layout with `tag` pointing at one image, or at an index of several (multi-arch). */
export function writeLayout(layout: string, tag: string, specs: ImageSpec[], asIndex = specs.length > 1): { top: string; images: WrittenImage[] } {
  fs.mkdirSync(layout, { recursive: true });
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const images = specs.map((s) => writeImage(layout, s));
  let top: { mediaType: string; digest: string; size: number };
  if (asIndex) {
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: images.map((im, i) => ({
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: im.manifestDigest,
          size: im.manifest.length,
          platform: {
            os: specs[i]!.os ?? 'linux',
            architecture: specs[i]!.architecture ?? 'amd64',
            ...(specs[i]!.variant ? { variant: specs[i]!.variant } : {}),
          },
        })),
      }),
    );
    const d = putBlob(layout, index);
    top = { mediaType: 'application/vnd.oci.image.index.v1+json', ...d };
  } else {
    top = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: images[0]!.manifestDigest, size: images[0]!.manifest.length };
  }
  let existing: { manifests: unknown[] } = { manifests: [] };
  try {
    existing = JSON.parse(fs.readFileSync(path.join(layout, 'index.json'), 'utf8')) as { manifests: unknown[] };
  } catch {
    /* new */
  }
  const manifests = (existing.manifests as { annotations?: Record<string, string> }[]).filter(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] !== tag,
  );
  manifests.push({ ...top, annotations: { 'org.opencontainers.image.ref.name': tag } } as never);
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }));
  return { top: top.digest, images };
}

function run(cmd: string, args: string[]): Promise<void> {
  // async: a token server may live in the test process
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 << 20 }, (err, _out, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(),
    );
  });
}

/** Push `oci:layout:tag` to a registry with skopeo (digests preserved, OCI manifests: zstd layers stay zstd). */
export function skopeoPush(layout: string, tag: string, dest: string, opts: { creds?: string; all?: boolean } = {}): Promise<void> {
  const args = ['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', '--format', 'oci'];
  if (opts.all) args.push('--all');
  if (opts.creds) args.push('--dest-creds', opts.creds);
  args.push(`oci:${layout}:${tag}`, dest);
  return run('skopeo', args);
}

/** Pull an image with skopeo into an OCI layout. */
export function skopeoPull(src: string, layout: string, tag: string, opts: { creds?: string } = {}): Promise<void> {
  const args = ['copy', '--quiet', '--src-tls-verify=false'];
  if (opts.creds) args.push('--src-creds', opts.creds);
  args.push(src, `oci:${layout}:${tag}`);
  return run('skopeo', args);
}

/** skopeo copy between any two references. */
export function skopeoCopy(src: string, dest: string): Promise<void> {
  return run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false', src, dest]);
}
