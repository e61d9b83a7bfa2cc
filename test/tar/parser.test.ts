/** The pure parts: header fields, PAX records, name cleaning, the streaming parser, header encoding. */
import { describe, expect, it } from 'vitest';
import { checksumOk, encodeHeader, numeric, parsePax, parsePaxTime, type TarHeader } from '../../src/core/tar/headers.js';
import { TarParser } from '../../src/core/tar/parser.js';
import { cleanName } from '../../src/core/tar/paths.js';
import { UnsafeTarError } from '../../src/core/tar/errors.js';
import { gnuLong, paxData, paxEntry, rawEntry, rawHeader, tar } from './helpers.js';

interface Seen {
  h: TarHeader;
  data: Buffer;
}

function parse(buf: Buffer, chunk = buf.length || 1): Seen[] {
  const out: Seen[] = [];
  let cur: Seen | null = null;
  const p = new TarParser({
    entry: (h) => {
      cur = { h, data: Buffer.alloc(0) };
      out.push(cur);
    },
    data: (b, s, e) => {
      cur!.data = Buffer.concat([cur!.data, b.subarray(s, e)]);
    },
    entryEnd: () => undefined,
  });
  for (let i = 0; i < buf.length; i += chunk) p.push(buf.subarray(i, i + chunk));
  p.end();
  return out;
}

const H = (over: Partial<TarHeader>): TarHeader => ({
  name: 'x',
  linkname: '',
  type: 'file',
  mode: 0o644,
  uid: 0,
  gid: 0,
  size: 0,
  mtime: { sec: 1_600_000_000, nsec: 0 },
  devmajor: 0,
  devminor: 0,
  uname: '',
  gname: '',
  xattrs: null,
  ...over,
});

describe('header fields', () => {
  it('numeric: octal with padding, base-256, malformed', () => {
    const f = (s: string | number[]): number =>
      numeric(typeof s === 'string' ? Buffer.from(s, 'latin1') : Buffer.from(s), 0, typeof s === 'string' ? s.length : s.length);
    expect(f('0000644\0')).toBe(0o644);
    expect(f('   755 \0')).toBe(0o755);
    expect(f('\0\0\0\0\0\0\0\0')).toBe(0);
    expect(f('12345670123\0')).toBe(0o12345670123);
    expect(f([0x80, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0])).toBe(2 * 65536);
    expect(f([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])).toBe(-2);
    expect(f('0x12\0\0\0\0')).toBeNaN();
    expect(f('12 34\0\0\0')).toBeNaN();
  });

  it('checksum: unsigned, and the signed variant of old tars', () => {
    const h = rawHeader({ name: 'ok' });
    expect(checksumOk(h, 0)).toBe(true);
    const hi = rawHeader({ name: Buffer.from([0xe9, 0xe9]) });
    expect(checksumOk(hi, 0)).toBe(true);
    // rewrite with the signed sum
    let signed = 0;
    for (let i = 0; i < 512; i++) {
      const c = i >= 148 && i < 156 ? 0x20 : hi[i]!;
      signed += c < 128 ? c : c - 256;
    }
    hi.write(signed.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
    expect(checksumOk(hi, 0)).toBe(true);
    expect(checksumOk(rawHeader({ name: 'x', checksumDelta: 1 }), 0)).toBe(false);
  });

  it('PAX times', () => {
    expect(parsePaxTime('1.5')).toEqual({ sec: 1, nsec: 500_000_000 });
    expect(parsePaxTime('1234567890.123456789123')).toEqual({ sec: 1234567890, nsec: 123_456_789 });
    expect(parsePaxTime('-1.25')).toEqual({ sec: -2, nsec: 750_000_000 });
    expect(parsePaxTime('-3')).toEqual({ sec: -3, nsec: 0 });
    expect(parsePaxTime('7.')).toEqual({ sec: 7, nsec: 0 });
    expect(parsePaxTime('1e3')).toBeNull();
    expect(parsePaxTime('')).toBeNull();
  });

  it('PAX records: binary xattr values byte-exact (0xc0, NUL, newline), libarchive xattrs, malformed records', () => {
    const cap = Buffer.from('01000002c0000000000000000000000000000000', 'hex');
    const weird = Buffer.from([0, 0x0a, 0xff, 0x3d, 0xc3, 0x28]);
    const r = parsePax(
      paxData([
        ['path', Buffer.from([0x61, 0xe9])],
        ['SCHILY.xattr.security.capability', cap],
        ['SCHILY.xattr.user.weird', weird],
        ['LIBARCHIVE.xattr.user.%C3%A9t%C3%A9', Buffer.from(weird).toString('base64')],
        ['LIBARCHIVE.xattr.security.capability', 'AAAA'],
      ]),
      'e',
    );
    expect(Buffer.from(r.fields.get('path')!, 'latin1')).toEqual(Buffer.from([0x61, 0xe9]));
    expect(r.xattrs!.get('security.capability')).toEqual(cap); // SCHILY wins over LIBARCHIVE
    expect(r.xattrs!.get('user.weird')).toEqual(weird);
    expect(r.xattrs!.get(Buffer.from('user.été').toString('latin1'))).toEqual(weird);
    for (const bad of ['5 a=b', '99 path=x\n', '6 =xy\n', 'x path=y\n', '7 pathx\n']) {
      expect(() => parsePax(Buffer.from(bad), 'e')).toThrow(UnsafeTarError);
    }
    expect(() => parsePax(paxData([['GNU.sparse.realsize', '12345']]), 'e')).toThrow(/sparse/);
  });

  it('cleanName follows Docker', () => {
    expect(cleanName('./a//b/')).toEqual(['a', 'b']);
    expect(cleanName('/etc/passwd')).toEqual(['etc', 'passwd']);
    expect(cleanName('/../x')).toEqual(['x']);
    expect(cleanName('a/../b')).toEqual(['b']);
    expect(cleanName('.')).toEqual([]);
    expect(cleanName('./')).toEqual([]);
    expect(cleanName('/')).toEqual([]);
    expect(cleanName('..')).toBeNull();
    expect(cleanName('a/../../x')).toBeNull();
    expect(cleanName('...')).toEqual(['...']);
    expect(cleanName('.wh...')).toEqual(['.wh...']);
  });
});

describe('streaming parser', () => {
  const sample = tar(
    rawEntry({ name: 'dir/', type: '5', mode: 0o755 }),
    rawEntry({ name: 'dir/f', mode: 0o4755, uid: 7, gid: 8, mtime: 99 }, Buffer.alloc(1500, 3)),
    paxEntry([
      ['path', 'long/'.repeat(40) + 'name'],
      ['mtime', '5.000000001'],
      ['SCHILY.xattr.user.x', Buffer.from([0xc0, 0])],
    ]),
    rawEntry({ name: 'short' }, 'pax'),
    gnuLong('L', 'gnu/' + 'n'.repeat(200)),
    gnuLong('K', 'target/' + 't'.repeat(200)),
    rawEntry({ name: 'trunc', type: '2', format: 'gnu' }),
    rawEntry({ name: 'sym', type: '2', linkname: 'dir/f', size: 512 }), // header-only: size ignored (Go)
    rawEntry({ name: 'c', type: '3', devmajor: 4, devminor: 64 }),
    rawEntry({ name: 'p', type: '6' }),
    rawEntry({ name: 'h', type: '1', linkname: 'dir/f' }),
    rawEntry({ name: 'cont', type: '7' }, 'contiguous'),
  );

  it('same entries for every chunking, down to one byte at a time', () => {
    const whole = parse(sample);
    expect(whole.map((s) => [s.h.type, Buffer.from(s.h.name, 'latin1').toString()])).toEqual([
      ['dir', 'dir/'],
      ['file', 'dir/f'],
      ['file', 'long/'.repeat(40) + 'name'],
      ['symlink', 'gnu/' + 'n'.repeat(200)],
      ['symlink', 'sym'],
      ['char', 'c'],
      ['fifo', 'p'],
      ['link', 'h'],
      ['file', 'cont'],
    ]);
    expect(whole[1]!.h).toMatchObject({ mode: 0o4755, uid: 7, gid: 8, mtime: { sec: 99, nsec: 0 }, size: 1500 });
    expect(whole[1]!.data.equals(Buffer.alloc(1500, 3))).toBe(true);
    expect(whole[2]!.h.mtime).toEqual({ sec: 5, nsec: 1 });
    expect(whole[2]!.h.xattrs!.get('user.x')).toEqual(Buffer.from([0xc0, 0]));
    expect(whole[3]!.h.linkname).toBe('target/' + 't'.repeat(200));
    expect(whole[4]!.h.size).toBe(0);
    expect(whole[5]!.h).toMatchObject({ devmajor: 4, devminor: 64 });
    expect(whole[8]!.data.toString()).toBe('contiguous');
    for (const chunk of [1, 3, 100, 511, 512, 513, 1024]) {
      const got = parse(sample, chunk);
      expect(got.map((s) => [s.h, s.data.toString('hex')])).toEqual(whole.map((s) => [s.h, s.data.toString('hex')]));
    }
  });

  it('ignores anything after the end-of-archive marker', () => {
    const p = new TarParser({ entry: () => undefined, data: () => undefined, entryEnd: () => undefined });
    p.push(Buffer.concat([tar(rawEntry({ name: 'a' }, 'a')), Buffer.from('junk, not a header at all'.repeat(100))]));
    p.end();
    expect(p.ended).toBe(true);
  });

  it('a zero block followed by a header is malformed', () => {
    expect(() => parse(Buffer.concat([Buffer.alloc(512), rawEntry({ name: 'a' }, 'a')]))).toThrow(/zero block/);
  });
});

describe('encodeHeader', () => {
  it('round-trips through the parser (PAX when needed, plain ustar otherwise)', () => {
    const cases: TarHeader[] = [
      H({ name: 'plain', size: 3 }),
      H({ name: 'd/'.repeat(60) + 'leaf', size: 1 }), // > 100, split into prefix/name
      H({ name: 'x'.repeat(300), size: 1 }),
      H({ name: Buffer.from('naïve/🎉').toString('latin1'), size: 1 }),
      H({ name: 'big', uid: 3_000_000, gid: 2_097_152, size: 1 }),
      H({ name: 'ns', mtime: { sec: 1, nsec: 1 }, size: 1 }),
      H({ name: 'neg', mtime: { sec: -100, nsec: 250_000_000 }, size: 1 }),
      H({ name: 'at', atime: { sec: 10, nsec: 5 }, size: 1 }),
      H({
        name: 'xa',
        xattrs: new Map([
          ['security.capability', Buffer.from('01000002c0', 'hex')],
          ['user.z', Buffer.alloc(0)],
        ]),
        size: 1,
      }),
      H({ name: 'l', type: 'symlink', linkname: '/very/'.repeat(30) }),
      H({ name: 'dev', type: 'block', devmajor: 259, devminor: 1_048_575 }),
      H({ name: 'dir', type: 'dir', mode: 0o1777 }),
    ];
    for (const h of cases) {
      const data = h.type === 'file' ? Buffer.alloc(h.size, 0x61) : Buffer.alloc(0);
      const enc = Buffer.concat([encodeHeader(h), data, Buffer.alloc((512 - (data.length % 512)) % 512), Buffer.alloc(1024)]);
      const [got] = parse(enc);
      const want = { ...h, name: h.type === 'dir' ? h.name + '/' : h.name };
      expect(got!.h).toEqual(want);
      const needsPax = h.name.length > 100 && h.name !== cases[1]!.name;
      if (needsPax) expect(enc.subarray(156, 157).toString()).toBe('x');
    }
    expect(encodeHeader(cases[0]!).length).toBe(512);
    expect(encodeHeader(cases[1]!).length).toBe(512);
  });
});
