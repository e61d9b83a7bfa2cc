/**
 * tar-split (src/core/tar/split.ts): the record of a layer tar without its
 * file contents, from which containers/storage rebuilds the exact tar
 * (`podman save`). Checked here by rebuilding it the way tar-split's
 * assembler does (segments as they are, each file's content read back by
 * name and checked against its crc64), for tars fed in chunks of every size;
 * podman itself rebuilds the converter's records in podman-tools.e2e.test.ts.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { cleanName, Crc64, TarSplitRecorder, tarSplitTee } from '../../src/core/tar/split.js';
import { extractLayer } from '../../src/core/tar/index.js';
import { needs, tempDir } from '../helpers/env.js';
import { END, gnuLong, paxEntry, rawEntry, sha256, streamOf, tar } from './helpers.js';

interface Line {
  type: number;
  name?: string;
  name_raw?: string;
  size?: number;
  payload: string | null;
  position: number;
}

function record(buf: Buffer, chunk: number): { lines: Line[]; failure: string | null; text: string } {
  const out: string[] = [];
  const r = new TarSplitRecorder((l) => void out.push(l));
  for (let i = 0; i < buf.length; i += chunk) r.push(buf.subarray(i, i + chunk));
  r.end();
  return { lines: out.map((l) => JSON.parse(l) as Line), failure: r.failure, text: out.join('') };
}

/** tar-split's assembler: segments as they are, files read back from `files` and checked against their crc64. */
function assemble(lines: Line[], read: (name: Buffer) => Buffer): Buffer {
  const parts: Buffer[] = [];
  lines.forEach((l, i) => {
    expect(l.position).toBe(i);
    if (l.type === 2) parts.push(Buffer.from(l.payload!, 'base64'));
    else if (l.size) {
      const data = read(l.name !== undefined ? Buffer.from(l.name, 'utf8') : Buffer.from(l.name_raw!, 'base64'));
      expect(new Crc64().update(data).digest().toString('base64'), `crc64 of ${l.name}`).toBe(l.payload);
      parts.push(data);
    }
  });
  return Buffer.concat(parts);
}

const hello = Buffer.from('hello, world\n');
const big = Buffer.alloc(70_000, 7);
const nonUtf8 = Buffer.from([0x66, 0xff, 0xfe, 0x2e, 0x74]);
const sample = Buffer.concat([
  rawEntry({ name: './', type: '5', mode: 0o755 }),
  rawEntry({ name: 'etc/', type: '5' }),
  rawEntry({ name: 'etc/hello' }, hello),
  rawEntry({ name: 'etc/.wh.gone' }),
  paxEntry([['path', `deep/${'d'.repeat(150)}/file ✓`]]),
  rawEntry({ name: 'ignored-by-pax' }, big),
  gnuLong('L', `gnu/${'g'.repeat(120)}`),
  rawEntry({ name: '././@LongLink-ignored', format: 'gnu' }, 'gnu long\n'),
  rawEntry({ name: nonUtf8 }, 'latin-1 name\n'),
  rawEntry({ name: 'hard', type: '1', linkname: 'etc/hello' }),
  rawEntry({ name: 'sym', type: '2', linkname: 'etc/hello' }),
  rawEntry({ name: 'empty' }),
  END,
  Buffer.alloc(8 * 1024), // blocking to 10 KiB, as GNU tar writes it
]);
const contents = new Map<string, Buffer>([
  ['etc/hello', hello],
  [`deep/${'d'.repeat(150)}/file ✓`, big],
  [`gnu/${'g'.repeat(120)}`, Buffer.from('gnu long\n')],
  [nonUtf8.toString('latin1'), Buffer.from('latin-1 name\n')],
]);
const readSample = (name: Buffer) => contents.get(name.toString('latin1')) ?? contents.get(name.toString('utf8'))!;

describe('crc64 (Go hash/crc64, ISO table)', () => {
  it('gives the catalogue check value and the same sum however the input is split', () => {
    expect(new Crc64().update(Buffer.from('123456789')).digest().toString('hex')).toBe('b90956c775a41001');
    expect(new Crc64().digest().toString('hex')).toBe('0000000000000000');
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 31) & 255));
    const whole = new Crc64().update(data).digest();
    for (const step of [1, 3, 8, 9, 999]) {
      const c = new Crc64();
      for (let i = 0; i < data.length; i += step) c.update(data, i, Math.min(data.length, i + step));
      expect(c.digest()).toEqual(whole);
    }
  });
});

describe('tar-split recorder', () => {
  it('records every entry (PAX and GNU long names, a name that is not UTF-8) and what follows the archive; the tar rebuilds byte for byte', () => {
    const { lines, failure, text } = record(sample, 1 << 20);
    expect(failure).toBeNull();
    const files = lines.filter((l) => l.type === 1);
    expect(files.map((l) => l.name ?? `raw:${l.name_raw}`)).toEqual([
      './',
      'etc/',
      'etc/hello',
      'etc/.wh.gone',
      `deep/${'d'.repeat(150)}/file ✓`,
      `gnu/${'g'.repeat(120)}`,
      `raw:${nonUtf8.toString('base64')}`,
      'hard',
      'sym',
      'empty',
    ]);
    expect(files.find((l) => l.name === 'etc/hello')).toEqual({
      type: 1,
      name: 'etc/hello',
      size: hello.length,
      payload: new Crc64().update(hello).digest().toString('base64'),
      position: 5,
    });
    // header-only entries: no size, a null payload (as Go encodes a nil []byte)
    expect(text).toContain('{"type":1,"name":"./","payload":null,"position":1}\n');
    expect(sha256(assemble(lines, readSample))).toBe(sha256(sample));
  });

  it.each([1, 7, 100, 511, 512, 513, 4096])('gives the same record when the tar comes in %i-byte chunks', (chunk) => {
    expect(record(sample, chunk).text).toBe(record(sample, 1 << 20).text);
  });

  it('keeps segments to 1 MiB each (a huge run of bytes after the archive)', () => {
    const t = Buffer.concat([rawEntry({ name: 'a' }, 'a'), END, Buffer.alloc(2_500_000)]);
    const { lines } = record(t, 65536);
    expect(lines.filter((l) => l.type === 2).every((l) => Buffer.from(l.payload!, 'base64').length <= 1 << 20)).toBe(true);
    expect(sha256(assemble(lines, () => Buffer.from('a')))).toBe(sha256(t));
  });

  it.each([
    [
      'two entries with one name (tar-split keeps one file per name)',
      tar(rawEntry({ name: 'x' }, '1'), rawEntry({ name: './x' }, '2')),
      /two entries named "x"/,
    ],
    ['a truncated tar', rawEntry({ name: 'x' }, 'abc').subarray(0, 600), /truncated/],
    ['a corrupt header', tar(rawEntry({ name: 'x', checksumDelta: 1 }, 'abc')), /checksum/],
  ])('gives up on %s without throwing', (_what, t, re) => {
    const r = record(t, 100);
    expect(r.failure).toMatch(re);
  });

  it('cleans names as Go filepath.Clean does', () => {
    expect(['', '.', './', 'a/', './a/./b/', 'a//b', 'a/../b', '../a', '/..', '/a/b/../c/'].map(cleanName)).toEqual([
      '.',
      '.',
      '.',
      'a',
      'a/b',
      'a/b',
      'b',
      '../a',
      '/',
      '/a/c',
    ]);
  });
});

describe('tarSplitTee', () => {
  const work = tempDir('cvmfs-thin-split-');

  it('passes the stream on unchanged and writes the gzip record to a file, or gives it in memory', async () => {
    const file = path.join(work, 'a.tar-split.gz');
    const tee = tarSplitTee({ file });
    const passed: Buffer[] = [];
    await pipeline(streamOf(sample, 333), tee.stream, async function* (src) {
      for await (const c of src) passed.push(c as Buffer);
    });
    expect(sha256(Buffer.concat(passed))).toBe(sha256(sample));
    expect(await tee.done).toEqual({ ok: true, entries: 10 });
    expect(gunzipSync(fs.readFileSync(file)).toString('utf8')).toBe(record(sample, 1 << 20).text);
    const mem = tarSplitTee({ memory: true });
    await pipeline(Readable.from([sample]), mem.stream, async function* (src) {
      for await (const _ of src) void _;
    });
    const got = await mem.done;
    expect(got.ok && gunzipSync(got.data!).toString('utf8')).toBe(record(sample, 1 << 20).text);
  });

  it('removes its file when the tar cannot be recorded, and when aborted', async () => {
    const file = path.join(work, 'dup.tar-split.gz');
    const tee = tarSplitTee({ file });
    await pipeline(Readable.from([tar(rawEntry({ name: 'x' }, '1'), rawEntry({ name: 'x' }, '2'))]), tee.stream, async function* (src) {
      for await (const _ of src) void _;
    });
    expect(await tee.done).toMatchObject({ ok: false, reason: expect.stringMatching(/two entries named/) });
    expect(fs.existsSync(file)).toBe(false);
    const file2 = path.join(work, 'aborted.tar-split.gz');
    const t2 = tarSplitTee({ file: file2 });
    t2.stream.write(sample.subarray(0, 1000));
    await t2.abort();
    expect(await t2.done).toEqual({ ok: false, reason: 'aborted' });
    expect(fs.existsSync(file2)).toBe(false);
  });

  it.skipIf(needs({ binaries: ['tar'] }))('rebuilds a GNU tar of a real tree from the tree the extractor unpacked from the same stream', async () => {
    const src = path.join(work, 'src');
    fs.mkdirSync(path.join(src, 'd/e'), { recursive: true });
    fs.writeFileSync(path.join(src, 'd/e/f'), Buffer.alloc(123_457, 3));
    fs.writeFileSync(path.join(src, 'x'), 'x\n');
    fs.symlinkSync('x', path.join(src, 'link'));
    fs.linkSync(path.join(src, 'x'), path.join(src, 'hard'));
    fs.writeFileSync(path.join(src, `${'n'.repeat(120)} ✓`), 'long\n');
    const t = execFileSync('tar', ['--format=pax', '--sort=name', '-C', src, '-cf', '-', '.']);
    const dest = path.join(work, 'dest');
    fs.mkdirSync(dest);
    const file = path.join(work, 'real.tar-split.gz');
    const tee = tarSplitTee({ file });
    streamOf(t, 4000).pipe(tee.stream);
    const res = await extractLayer(tee.stream, { dest, whiteouts: 'overlay' });
    expect(res.diffId).toBe(sha256(t));
    expect((await tee.done).ok).toBe(true);
    const lines = gunzipSync(fs.readFileSync(file))
      .toString('utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Line);
    expect(sha256(assemble(lines, (n) => fs.readFileSync(path.join(dest, n.toString('utf8')))))).toBe(sha256(t));
  });
});
