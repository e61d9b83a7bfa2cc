/**
 * Two of the probe helper's operations (core/host/probe-child.ts). `counters`:
 * getfattr run by the helper, not the daemon (a spawn blocks the daemon's
 * event loop). `copy`, which fetches a profile's pack for a hot layer: an exactly sized regular file copied as
 * pieces read at once through their own descriptors, each piece the file's
 * bytes at its offset — also while other probes read files in the same
 * helper — and nothing copied from a link, a file of another size, into an
 * existing file, or for a nonsense piece count. Without a target, the pieces
 * are read and dropped (an image mounted from CVMFS, read ahead); `head`
 * answers the first bytes of a file.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProbeHelper } from '../../src/core/host/probe-child.js';
import { needs, tempDir } from '../helpers/env.js';

const helper = new ProbeHelper();
afterAll(() => helper.stop());

describe.skipIf(needs({ binaries: ['getfattr'] }))("the probe helper reads a mount's counters", () => {
  it("getfattr's output for a path (a plain directory has no CVMFS counters: nothing listed); a missing path is not ok", async () => {
    const dir = tempDir('probe-counters-');
    const [plain, missing] = await helper.run([
      { op: 'counters', path: dir },
      { op: 'counters', path: path.join(dir, 'nope') },
    ]);
    expect(plain).toEqual({ ok: true, text: '' });
    expect(missing).toMatchObject({ ok: false, message: expect.stringContaining(`getfattr ${path.join(dir, 'nope')}`) as unknown });
  });
});

describe('the probe helper copies a file in pieces', () => {
  const dir = tempDir('probe-copy-');
  const src = path.join(dir, 'pack');
  const data = randomBytes(3 * (1 << 20) + 12_345);
  fs.writeFileSync(src, data);
  let n = 0;
  const to = () => path.join(dir, `out${n++}`);
  const pieces = (t: string, count: number) => Array.from({ length: count }, (_, i) => fs.readFileSync(`${t}.${i}`));

  it('each piece is the file at its offset, whatever the count; reads in the same helper meanwhile change nothing', async () => {
    for (const count of [1, 3, 4, 16]) {
      const t = to();
      const others = Array.from({ length: 8 }, () => ({ op: 'read' as const, path: src }));
      const [[a]] = await Promise.all([helper.run([{ op: 'copy', path: src, copy: { to: t, size: data.length, count } }]), helper.run(others)]);
      expect(a, `${count} pieces`).toEqual({ ok: true, bytes: data.length });
      const per = Math.ceil(data.length / count);
      expect(pieces(t, count).map((b) => b.length)).toEqual(Array.from({ length: count }, (_, i) => Math.max(0, Math.min(per, data.length - i * per))));
      expect(Buffer.concat(pieces(t, count)).equals(data), `${count} pieces`).toBe(true);
    }
    const empty = path.join(dir, 'empty');
    fs.writeFileSync(empty, '');
    const t = to();
    expect(await helper.run([{ op: 'copy', path: empty, copy: { to: t, size: 0, count: 2 } }])).toEqual([{ ok: true, bytes: 0 }]);
    expect(pieces(t, 2).map((b) => b.length)).toEqual([0, 0]);
  });

  it('a link, another size, an existing target or a nonsense count: refused, saying why', async () => {
    const link = path.join(dir, 'link');
    fs.symlinkSync(src, link);
    const [viaLink] = await helper.run([{ op: 'copy', path: link, copy: { to: to(), size: data.length, count: 2 } }]);
    expect(viaLink).toMatchObject({ ok: false, code: 'ELOOP' });
    const [other] = await helper.run([{ op: 'copy', path: src, copy: { to: to(), size: data.length - 1, count: 2 } }]);
    expect(other).toMatchObject({ ok: false, code: 'EFBIG', message: `${src} has ${data.length} bytes, not ${data.length - 1}` });
    const t = to();
    fs.writeFileSync(`${t}.0`, 'mine');
    const [taken] = await helper.run([{ op: 'copy', path: src, copy: { to: t, size: data.length, count: 1 } }]);
    expect(taken).toMatchObject({ ok: false, code: 'EEXIST' });
    expect(fs.readFileSync(`${t}.0`, 'utf8')).toBe('mine');
    for (const count of [0, 17, 1.5]) {
      const [bad] = await helper.run([{ op: 'copy', path: src, copy: { to: to(), size: data.length, count } }]);
      expect(bad, String(count)).toMatchObject({ ok: false, code: 'EINVAL' });
    }
    const [dirCopy] = await helper.run([{ op: 'copy', path: dir, copy: { to: to(), size: 0, count: 1 } }]);
    expect(dirCopy).toMatchObject({ ok: false, code: 'EINVAL' });
  });
});

describe("the probe helper reads a mounted image's file ahead, and a file's head", () => {
  const dir = tempDir('probe-warm-');
  const src = path.join(dir, 'image');
  const data = randomBytes(2 * (1 << 20) + 7);
  fs.writeFileSync(src, data);

  it('copy without a target reads every piece and writes nothing; size and links are checked as for a copy', async () => {
    const before = fs.readdirSync(dir);
    expect(await helper.run([{ op: 'copy', path: src, copy: { size: data.length, count: 4 } }])).toEqual([{ ok: true, bytes: data.length }]);
    expect(fs.readdirSync(dir)).toEqual(before);
    const [short] = await helper.run([{ op: 'copy', path: src, copy: { size: data.length + 1, count: 4 } }]);
    expect(short).toMatchObject({ ok: false, code: 'EFBIG' });
    fs.symlinkSync(src, path.join(dir, 'link'));
    const [viaLink] = await helper.run([{ op: 'copy', path: path.join(dir, 'link'), copy: { size: data.length, count: 1 } }]);
    expect(viaLink).toMatchObject({ ok: false, code: 'ELOOP' });
  });

  it('head: the first bytes as base64 (fewer at the end of a small file); a link, a directory or a nonsense size refused', async () => {
    const small = path.join(dir, 'small');
    fs.writeFileSync(small, 'abc');
    const [h, s] = await helper.run([
      { op: 'read', path: src, head: 2048 },
      { op: 'read', path: small, head: 2048 },
    ]);
    expect(h).toEqual({ ok: true, bytes: 2048, text: data.subarray(0, 2048).toString('base64') });
    expect(s).toEqual({ ok: true, bytes: 3, text: Buffer.from('abc').toString('base64') });
    fs.symlinkSync(small, path.join(dir, 'slink'));
    const bad = await helper.run([
      { op: 'read', path: path.join(dir, 'slink'), head: 10 },
      { op: 'read', path: dir, head: 10 },
      { op: 'read', path: src, head: 0 },
      { op: 'read', path: src, head: 65537 },
    ]);
    expect(bad.map((b) => (b.ok ? 'ok' : b.code))).toEqual(['ELOOP', 'EINVAL', 'EINVAL', 'EINVAL']);
  });
});
