/** Test images for the benches: a staged directory → gzip (or plain tar) layer (GNU tar, PAX, numeric owners), and a minimal OCI layout. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface Layer {
  file: string;
  digest: string;
  diffId: string;
  size: number;
  /** default: gzip */
  mediaType?: string;
}

export const sha = (f: string) => {
  const h = createHash('sha256');
  const fd = fs.openSync(f, 'r');
  const buf = Buffer.allocUnsafe(8 << 20);
  for (;;) {
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
  }
  fs.closeSync(fd);
  return `sha256:${h.digest('hex')}`;
};

export function makeLayer(stage: string, out: string, opts: { gzip?: boolean } = {}): Layer {
  const tar = `${out}.tar`;
  execFileSync('tar', ['--format=pax', '--numeric-owner', '-C', stage, '-cf', tar, '.']);
  const diffId = sha(tar);
  if (opts.gzip === false) return { file: tar, digest: diffId, diffId, size: fs.statSync(tar).size, mediaType: 'application/vnd.oci.image.layer.v1.tar' };
  execFileSync('gzip', ['-1', '-n', '-f', tar]);
  const file = `${tar}.gz`;
  return { file, digest: sha(file), diffId, size: fs.statSync(file).size };
}

export function writeLayout(layout: string, tag: string, layers: Layer[]): void {
  const blobs = path.join(layout, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const put = (b: Buffer) => {
    const d = `sha256:${createHash('sha256').update(b).digest('hex')}`;
    fs.writeFileSync(path.join(blobs, d.slice(7)), b);
    return { digest: d, size: b.length };
  };
  for (const l of layers) fs.linkSync(l.file, path.join(blobs, l.digest.slice(7)));
  const cfg = put(
    Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) } })),
  );
  const man = put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg },
        layers: layers.map((l) => ({ mediaType: l.mediaType ?? 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
      }),
    ),
  );
  fs.writeFileSync(
    path.join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...man, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
}
