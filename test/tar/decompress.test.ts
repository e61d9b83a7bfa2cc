/** decompress(): gzip, zstd (process and JS), sniffing, media types, corrupt input. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { compressionForMediaType, decompress, extractLayer, isForeignLayer, sniffCompression } from '../../src/core/tar/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { collect, rawEntry, sha256, streamOf, tar } from './helpers.js';

const base = tempDir('cvmfs-thin-decompress-');
const plain = Buffer.concat([randomBytes(300_000), Buffer.alloc(700_000, 'a'), randomBytes(50_000)]);
const zst = (buf: Buffer, args: string[] = []): Buffer => execFileSync('zstd', ['-q', '-c', ...args], { input: buf, maxBuffer: 1 << 26 });

describe('decompress', () => {
  it('gzip (incl. multi-member) and auto-detected gzip', async () => {
    const gz = Buffer.concat([zlib.gzipSync(plain.subarray(0, 500_000)), zlib.gzipSync(plain.subarray(500_000))]);
    expect((await collect(decompress(streamOf(gz, 1000), 'gzip'))).equals(plain)).toBe(true);
    const small = plain.subarray(0, 2000);
    expect((await collect(decompress(streamOf(zlib.gzipSync(small), 1), 'auto'))).equals(small)).toBe(true);
    expect((await collect(decompress(streamOf(gz, 1001), 'auto'))).equals(plain)).toBe(true);
  });

  it('none and auto on plain data pass it through unchanged, even tiny inputs', async () => {
    expect((await collect(decompress(streamOf(plain), 'none'))).equals(plain)).toBe(true);
    expect((await collect(decompress(streamOf(plain, 2), 'auto'))).equals(plain)).toBe(true);
    for (const tiny of [Buffer.alloc(0), Buffer.from([0x1f]), Buffer.from([0x28, 0xb5, 0x2f])]) {
      expect((await collect(decompress(Readable.from(tiny.length ? [tiny] : []), 'auto'))).equals(tiny)).toBe(true);
    }
  });

  it('gzip errors surface on the stream as CVMFS_THIN_BAD_COMPRESSED_DATA (invalid-argument)', async () => {
    const gz = zlib.gzipSync(plain);
    gz[100] = gz[100]! ^ 0xff;
    const typed = { name: 'InvalidArgumentError', code: 'CVMFS_THIN_BAD_COMPRESSED_DATA', kind: 'invalid-argument' };
    await expect(collect(decompress(streamOf(gz), 'gzip'))).rejects.toMatchObject({ ...typed, message: expect.stringMatching(/^gzip: /) as unknown });
    const cut = collect(decompress(streamOf(zlib.gzipSync(plain).subarray(0, 5000)), 'auto'));
    await expect(cut).rejects.toMatchObject({ ...typed, message: 'gzip: unexpected end of file' });
    await expect(cut.catch((e: Error) => (e.cause as NodeJS.ErrnoException).code)).resolves.toBe('Z_BUF_ERROR');
  });

  it('input errors surface on the stream', async () => {
    async function* broken(): AsyncGenerator<Buffer> {
      yield zlib.gzipSync(plain).subarray(0, 100);
      throw new Error('connection reset');
    }
    await expect(collect(decompress(Readable.from(broken()), 'gzip'))).rejects.toThrow('connection reset');
    await expect(collect(decompress(Readable.from(broken()), 'auto'))).rejects.toThrow('connection reset');
  });

  it('sniffs magic bytes', () => {
    expect(sniffCompression(Buffer.from([0x1f, 0x8b, 8, 0]))).toBe('gzip');
    expect(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(sniffCompression(Buffer.from('ustar'))).toBe('none');
    expect(sniffCompression(Buffer.alloc(0))).toBe('none');
  });

  it('maps layer media types', () => {
    expect(compressionForMediaType('application/vnd.oci.image.layer.v1.tar')).toBe('none');
    expect(compressionForMediaType('application/vnd.oci.image.layer.v1.tar+gzip')).toBe('gzip');
    expect(compressionForMediaType('application/vnd.oci.image.layer.v1.tar+zstd')).toBe('zstd');
    expect(compressionForMediaType('application/vnd.oci.image.layer.nondistributable.v1.tar+gzip')).toBe('gzip');
    expect(compressionForMediaType('application/vnd.oci.image.layer.nondistributable.v1.tar+zstd')).toBe('zstd');
    expect(compressionForMediaType('application/vnd.docker.image.rootfs.diff.tar.gzip')).toBe('gzip');
    expect(compressionForMediaType('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip')).toBe('gzip');
    expect(compressionForMediaType('Application/VND.OCI.image.layer.v1.tar+gzip; foo=bar')).toBe('gzip');
    expect(() => compressionForMediaType('application/vnd.oci.image.config.v1+json')).toThrow(/not a layer media type/);
    expect(isForeignLayer('application/vnd.docker.image.rootfs.foreign.diff.tar.gzip')).toBe(true);
    expect(isForeignLayer('application/vnd.oci.image.layer.nondistributable.v1.tar')).toBe(true);
    expect(isForeignLayer('application/vnd.oci.image.layer.v1.tar+gzip')).toBe(false);
  });

  it('refuses an unknown kind', () => {
    // @ts-expect-error: not a kind
    expect(() => decompress(streamOf(plain), 'bzip2')).toThrow(/unknown compression/);
  });
});

describe.skipIf(needs({ binaries: ['zstd'] }))('zstd', () => {
  // compressed in a hook, not while collecting: without zstd this block is skipped and must not run it
  let z: Buffer = Buffer.alloc(0);
  let twoFrames: Buffer = Buffer.alloc(0);
  beforeAll(() => {
    z = zst(plain);
    twoFrames = Buffer.concat([zst(plain.subarray(0, 400_000)), zst(plain.subarray(400_000))]);
  });

  it.each(['process', 'js'] as const)('decodes single and concatenated frames (%s), also via auto', async (how) => {
    expect((await collect(decompress(streamOf(z, 777), 'zstd', { zstd: how }))).equals(plain)).toBe(true);
    expect((await collect(decompress(streamOf(twoFrames), 'zstd', { zstd: how }))).equals(plain)).toBe(true);
    expect((await collect(decompress(streamOf(z, 2), 'auto', { zstd: how }))).equals(plain)).toBe(true);
  });

  it.each(['process', 'js'] as const)('truncated zstd is an error, never a short success (%s)', async (how) => {
    for (const cut of [1, 100, 20_000]) {
      await expect(collect(decompress(streamOf(z.subarray(0, z.length - cut)), 'zstd', { zstd: how }))).rejects.toThrow(/zstd/i);
    }
  });

  it('corrupt zstd is an error (process; fzstd does not verify the frame checksum, the blob digest must)', async () => {
    const bad = Buffer.from(z);
    for (let i = 20; i < 200; i++) bad[i] = 0x55;
    await expect(collect(decompress(streamOf(bad), 'zstd', { zstd: 'process' }))).rejects.toMatchObject({ code: 'CVMFS_THIN_BAD_COMPRESSED_DATA' });
  });

  it('feeds extractLayer: the diffId is the digest of the uncompressed tar', async () => {
    const layer = tar(rawEntry({ name: 'a' }, plain), rawEntry({ name: 'b' }, 'b'));
    for (const [kind, data] of [
      ['zstd', zst(layer)],
      ['gzip', zlib.gzipSync(layer)],
    ] as const) {
      const dest = fs.mkdtempSync(path.join(base, 'x-'));
      const res = await extractLayer(decompress(streamOf(data), 'auto'), { dest, whiteouts: 'overlay' });
      expect(res.diffId).toBe(sha256(layer));
      expect(fs.readFileSync(path.join(dest, 'a')).equals(plain)).toBe(true);
      expect(kind).toBeTruthy();
    }
  });
});
