/**
 * Fake converted trees for the store's semantic tests (no root needed): layer
 * directories with the converter's marker and DUCC's layers.json, and
 * `.metadata/<name>/{manifest.json,config.json}`, as `cvmfs-thin convert` leaves them.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import type { PodmanImageInput } from '../../src/convert/podman/index.js';

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface FakeLayer {
  /** Seed of its content: a file `/<seed>` holding the seed. */
  seed: string;
  /** Write deletions DUCC's way (a plain `.wh.<seed>-gone` file) and no marker. */
  plainWhiteout?: boolean;
  /** Leave out the converter's marker (a DUCC layer). */
  noMarker?: boolean;
  /** Another blob (compression) of the content of layer `sameContentAs`: same diff ID, other digest. */
  sameContentAs?: string;
  /** Leave out the tar-split the converter records (DUCC's layers, earlier versions). */
  noTarSplit?: boolean;
}

export interface FakeImage {
  treeName: string;
  input: PodmanImageInput;
  manifestDigest: string;
  configDigest: string;
  layers: { digest: string; diffId: string }[];
}

/** A layer's digests from its seed (the "compressed" and "uncompressed" digests only have to be consistent). */
export function layerDigests(seed: string): { digest: string; diffId: string } {
  return { digest: sha(`blob:${seed}`), diffId: sha(`tar:${seed}`) };
}

export function fakeLayer(repo: string, l: FakeLayer): { digest: string; diffId: string } {
  const d = { digest: layerDigests(l.seed).digest, diffId: layerDigests(l.sameContentAs ?? l.seed).diffId };
  const hex = d.digest.slice(7);
  const dir = path.join(repo, '.layers', hex.slice(0, 2), hex);
  fs.mkdirSync(path.join(dir, 'layerfs'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'layerfs', l.seed), `${l.seed}\n`);
  if (l.plainWhiteout) fs.writeFileSync(path.join(dir, 'layerfs', `.wh.${l.seed}-gone`), '');
  fs.mkdirSync(path.join(dir, '.metadata'), { recursive: true });
  if (!l.noMarker && !l.plainWhiteout) {
    fs.writeFileSync(
      path.join(dir, '.metadata', 'cvmfs-thin-layer.json'),
      JSON.stringify({ schema: 'cvmfs-thin/layer', version: 1, digest: d.digest, diff_id: d.diffId, whiteouts: 'overlay', created: '2024-01-01T00:00:00Z' }),
    );
  }
  fs.writeFileSync(
    path.join(dir, '.metadata', 'layers.json'),
    JSON.stringify([{ id: d.diffId.slice(7), 'diff-digest': d.diffId, 'diff-size': 10240 + l.seed.length }]),
  );
  if (!l.noTarSplit) fs.writeFileSync(path.join(dir, '.metadata', 'tar-split.json.gz'), gzipSync(`{"type":2,"payload":"","position":0}\n`));
  return d;
}

/** Build a converted image in `repo` and return what the converter would pass to the store. */
export function fakeImage(repo: string, treeName: string, layers: FakeLayer[], extra: Record<string, unknown> = {}): FakeImage {
  const ls = layers.map((l) => fakeLayer(repo, l));
  const config = Buffer.from(
    JSON.stringify({
      created: '2024-01-02T03:04:05Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: ls.map((l) => l.diffId) },
      ...extra,
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: ls.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: 100 })),
    }),
  );
  const meta = path.join(repo, '.metadata', treeName);
  fs.mkdirSync(meta, { recursive: true });
  fs.writeFileSync(path.join(meta, 'config.json'), config);
  fs.writeFileSync(path.join(meta, 'manifest.json'), manifest);
  const [registry, ...rest] = treeName.split('/');
  const name = `${registry === 'registry.hub.docker.com' ? 'docker.io' : registry}/${rest.join('/')}`;
  return {
    treeName,
    manifestDigest: sha(manifest),
    configDigest: sha(config),
    layers: ls,
    input: { names: [name], manifest, config, layers: ls.map((l) => ({ digest: l.digest, diffId: l.diffId, size: 100 })) },
  };
}

export function readJson<T = unknown>(f: string): T {
  return JSON.parse(fs.readFileSync(f, 'utf8')) as T;
}
