/**
 * Reading oci-archive and docker-archive sources (src/convert/image/archive.ts,
 * on the shared tar parser) without any daemon: round trips through the
 * archive targets, gzip archives, links as aliases, and hostile or broken
 * archives refused with CVMFS_THIN_BAD_ARCHIVE naming the problem.
 */
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { DockerArchiveSource, DockerArchiveTarget, OciArchiveTarget, openOciArchive } from '../../src/convert/image/archive.js';
import type { ImageToWrite } from '../../src/convert/image/source.js';
import { buildThinImage } from '../../src/convert/thin.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { tempDir } from '../helpers/env.js';
import { rawEntry, tar } from '../tar/helpers.js';
import { systemHost } from '../../src/core/host/host.js';

const dir = tempDir('cvmfs-thin-convert-archive-read-');

async function thinImage(): Promise<ImageToWrite> {
  return buildThinImage({
    origin: 'docker://h.io/a:1',
    manifestDigest: `sha256:${'d'.repeat(64)}`,
    config: { created: '2024-01-01T00:00:00Z', architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'] } },
    layers: ['c'.repeat(64)],
    repository: 'unpacked.cern.ch',
    platform: { os: 'linux', architecture: 'amd64' },
  });
}

async function refusal(p: Promise<unknown>): Promise<{ code: string; kind: string; message: string }> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(ThinError.is(e), `expected a ThinError, got ${String(e)}`).toBe(true);
  const t = e as ThinError;
  return { code: t.code, kind: t.kind, message: t.message };
}

describe('archive sources', () => {
  let img: ImageToWrite;
  beforeAll(async () => {
    img = await thinImage();
  });

  it('reads back an oci-archive it wrote, plain and gzip-compressed', async () => {
    const file = path.join(dir, 'thin-oci.tar');
    await new OciArchiveTarget(file, 't1', systemHost).write([img], null);
    const gz = path.join(dir, 'thin-oci.tar.gz');
    fs.writeFileSync(gz, gzipSync(fs.readFileSync(file)));
    for (const f of [file, gz]) {
      const src = await openOciArchive(f, 't1', systemHost, dir);
      try {
        expect((await src.topManifest()).digest).toBe(img.manifest.digest);
        expect(
          (await src.blobBytes({ mediaType: img.config.mediaType, digest: img.config.digest, size: img.config.bytes.length }, 1 << 20)).equals(
            img.config.bytes,
          ),
        ).toBe(true);
      } finally {
        await src.close();
      }
    }
    expect(await new OciArchiveTarget(file, 't1', systemHost).current()).toBe(img.manifest.digest);
  });

  it('reads back a docker-archive it wrote (config and layer found through manifest.json)', async () => {
    const file = path.join(dir, 'thin-docker.tar');
    await new DockerArchiveTarget(file, { registry: 'example.org', repository: 'team/app_thin', tag: '1' }, systemHost).write([img], null);
    const src = await DockerArchiveSource.open(file, {}, systemHost, dir);
    try {
      const m = JSON.parse((await src.topManifest()).bytes.toString()) as { config: { digest: string }; layers: { digest: string; size: number }[] };
      expect(m.config.digest).toBe(img.config.digest);
      // docker archives hold the uncompressed layer
      expect(m.layers).toEqual([expect.objectContaining({ size: img.layers[0]!.tar.length })]);
      expect(src.name).toMatchObject({ registry: 'example.org', repository: 'team/app_thin', tag: '1' });
    } finally {
      await src.close();
    }
  });

  it('follows symbolic and hard links as aliases, never as links on disk, and skips unsafe names', async () => {
    const cfg = Buffer.from(img.config.bytes);
    const manifest = JSON.stringify([{ Config: 'cfg.json', RepoTags: ['x.io/a:1'], Layers: ['layer-link.tar'] }]);
    const file = path.join(dir, 'links.tar');
    fs.writeFileSync(
      file,
      tar(
        rawEntry({ name: 'real/manifest.json' }, manifest),
        rawEntry({ name: 'manifest.json', type: '2', linkname: 'real/manifest.json' }),
        rawEntry({ name: 'cfg.json' }, cfg),
        rawEntry({ name: 'layer.tar' }, img.layers[0]!.tar),
        rawEntry({ name: 'layer-link.tar', type: '1', linkname: 'layer.tar' }),
        rawEntry({ name: 'escape', type: '2', linkname: '../../etc/passwd' }),
        rawEntry({ name: 'sp ace' }, 'ignored'),
      ),
    );
    const src = await DockerArchiveSource.open(file, {}, systemHost, dir);
    try {
      const m = JSON.parse((await src.topManifest()).bytes.toString()) as { config: { digest: string } };
      expect(m.config.digest).toBe(img.config.digest);
    } finally {
      await src.close();
    }
  });

  it.each([
    ['an entry climbing out', () => tar(rawEntry({ name: 'a/../../x' }, 'x')), /entry "a\/\.\.\/\.\.\/x" climbs out of the archive/],
    ['an absolute entry', () => tar(rawEntry({ name: '/etc/x' }, 'x')), /entry "\/etc\/x" is absolute/],
    ['a truncated archive', () => rawEntry({ name: 'index.json' }, 'x'.repeat(2000)).subarray(0, 1000), /not a readable tar archive: .*truncated/],
    ['a bad header checksum', () => tar(rawEntry({ name: 'index.json', checksumDelta: 1 }, '{}')), /not a readable tar archive: .*checksum/],
    [
      'corrupt gzip',
      () => Buffer.concat([gzipSync(tar(rawEntry({ name: 'index.json' }, '{}'))).subarray(0, 20), Buffer.alloc(40, 0xaa)]),
      /not a readable tar archive/,
    ],
  ])('refuses %s with CVMFS_THIN_BAD_ARCHIVE', async (_what, bytes, message) => {
    const file = path.join(dir, 'bad.tar');
    fs.writeFileSync(file, bytes());
    const r = await refusal(openOciArchive(file, undefined, systemHost, dir));
    expect(r).toMatchObject({ code: 'CVMFS_THIN_BAD_ARCHIVE', kind: 'invalid-argument' });
    expect(r.message).toMatch(message);
    expect(r.message).toContain(`oci-archive:${file}`);
  });

  it('refuses zstd archives, says a missing file is missing, and leaves no spool directory behind', async () => {
    const z = path.join(dir, 'z.tar.zst');
    fs.writeFileSync(z, Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]));
    expect(await refusal(openOciArchive(z, undefined, systemHost, path.join(dir, 'spool')))).toMatchObject({ code: 'CVMFS_THIN_UNSUPPORTED' });
    expect(await refusal(DockerArchiveSource.open(path.join(dir, 'nope.tar'), {}, systemHost, path.join(dir, 'spool')))).toMatchObject({ kind: 'not-found' });
    expect(fs.readdirSync(path.join(dir, 'spool'))).toEqual([]);
  });
});
