/**
 * Access profiles (core/thin/profile.ts) and their prefetch
 * (core/stack/prefetch.ts) without root: the strict profile reader against
 * hostile files, the profile's key, and the prefetch's budgets, a stalled
 * client and an abort — through the recording host (real files).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { duccChainIds } from '../../src/core/cvmfs/layout.js';
import { prefetchFiles } from '../../src/core/stack/prefetch.js';
import { parseProfile, profilePath, serializeProfile, stackId, type AccessProfile } from '../../src/core/thin/profile.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const H = (c: string) => c.repeat(64);
const base: AccessProfile = {
  schema: 'cvmfs-thin/access-profile',
  version: 1,
  layers: [H('a'), H('b')],
  prefetch: true,
  created: '2026-12-06T00:00:00Z',
  files: [{ path: 'bin/sh', layer: H('a'), size: 10, at: 3 }],
};

describe('access profiles', () => {
  it("round-trips, and keys a stack by its top layer's DUCC chain ID", () => {
    expect(parseProfile(serializeProfile(base))).toEqual({ ...base, source: undefined });
    expect(stackId([H('a'), H('b')])).toBe(duccChainIds([H('a'), H('b')])[1]);
    expect(stackId([H('a'), H('b')])).not.toBe(stackId([H('b'), H('a')]));
    expect(profilePath([H('a')])).toMatch(/^\.profiles\/[0-9a-f]{2}\/[0-9a-f]{64}\.json$/);
    expect(() => stackId([])).toThrow(/layers: is empty/);
  });

  it('refuses hostile and malformed profiles, naming the field', () => {
    const bad = (o: unknown) => () => parseProfile(typeof o === 'string' ? o : JSON.stringify(o));
    expect(bad('[1,2]')).toThrow('access profile: file: must be a JSON object');
    expect(bad('x'.repeat((8 << 20) + 1))).toThrow(/file: is larger than/);
    expect(bad('{"a":1,"a":2}')).toThrow(/file: is not valid JSON/);
    expect(bad({ ...base, schema: 'x' })).toThrow(/schema: must be "cvmfs-thin\/access-profile"/);
    expect(bad({ ...base, version: 2 })).toThrow(/version: must be 1/);
    expect(bad({ ...base, layers: ['../x'] })).toThrow(/layers: must be 1-500 hex sha256 digests/);
    expect(bad({ ...base, prefetch: 'no' })).toThrow(/prefetch: must be true or false/);
    expect(bad({ ...base, created: 'yesterday' })).toThrow(/created: must be a date/);
    for (const p of ['../etc/shadow', 'a/../../b', 'a//b', './a', '', 'a\0b', '.', 'x'.repeat(5000)]) {
      expect(bad({ ...base, files: [{ path: p, size: 1 }] }), p.slice(0, 20)).toThrow(/files\[0\]\.path: /);
    }
    expect(parseProfile(JSON.stringify({ ...base, files: [{ path: '/bin/sh', size: 1 }] })).files[0]!.path).toBe('bin/sh');
    expect(bad({ ...base, files: [{ path: 'a', size: -1 }] })).toThrow(/files\[0\]\.size: must be a byte count/);
    expect(bad({ ...base, files: [{ path: 'a', size: 1, mode: 7 }] })).toThrow(/files\[0\]\.mode: is not a known field/);
    const image = { bytes: 8192, sha256: H('c'), files: 1, uuid: '0'.repeat(32), data: { bytes: 4096, sha256: H('d') } };
    expect(parseProfile(JSON.stringify({ ...base, image })).image).toEqual(image);
    expect(bad({ ...base, image: { ...image, bytes: 8193 } })).toThrow(/image\.bytes: must be a multiple of 4096/);
    expect(bad({ ...base, image: { ...image, bytes: 2 ** 31 } })).toThrow(/image\.bytes: must be a byte count/);
    expect(bad({ ...base, image: { ...image, uuid: 'x' } })).toThrow(/image\.uuid: must be 32 hex digits/);
    expect(bad({ ...base, image: { ...image, uuid: undefined } })).toThrow(/image\.uuid: must be 32 hex digits/);
    expect(bad({ ...base, image: { ...image, path: '/etc' } })).toThrow(/image\.path: is not a known field/);
    expect(bad({ ...base, image: { ...image, sha256: 'z' } })).toThrow(/image\.sha256: must be a hex sha256/);
    expect(bad({ ...base, image: [] })).toThrow(/image: must be an object/);
    expect(bad({ ...base, image: { ...image, data: undefined } })).toThrow(/image\.data: must be an object/);
    expect(bad({ ...base, image: { ...image, data: { ...image.data, bytes: 100 } } })).toThrow(/image\.data\.bytes: must be a multiple of 4096/);
    expect(bad({ ...base, image: { ...image, data: { ...image.data, path: '/x' } } })).toThrow(/image\.data\.path: is not a known field/);
    expect(bad({ ...base, image: { ...image, data: { ...image.data, sha256: 1 } } })).toThrow(/image\.data\.sha256: must be a hex sha256/);
    expect(bad({ ...base, files: Array(20_001).fill({ path: 'a', size: 1 }) })).toThrow(/files: must be an array of at most 20000 entries/);
  });
});

describe('prefetch', () => {
  const dir = tempDir('prefetch-');
  const files = Array.from({ length: 40 }, (_, i) => {
    const p = path.join(dir, `d${i % 4}`, `f${i}`);
    mkdirSync(path.dirname(p), { recursive: true });
    writeFileSync(p, 'x'.repeat(100 + i));
    return { path: p, size: 100 + i };
  });

  it('reads every file once, counts missing ones and directories, in batches', async () => {
    const host = new RecordingHost();
    const r = await prefetchFiles(host, [...files, { path: path.join(dir, 'gone'), size: 5 }, { path: path.join(dir, 'd0'), size: 0 }]);
    expect(r).toMatchObject({ files: 40, bytes: files.reduce((a, f) => a + f.size, 0), missing: 1, failed: 1 });
    const reads = host.ops('probeFs').flatMap((c) => c.args as string[]);
    expect(new Set(reads).size).toBe(42);
    expect(host.ops('probeFs').every((c) => c.args.length <= 16)).toBe(true);
  });

  it('keeps to max-files and max-bytes, stops on abort, and gives up a stalled client after stallMs', async () => {
    const host = new RecordingHost();
    expect(await prefetchFiles(host, files, { maxFiles: 5 })).toMatchObject({ files: 5, stopped: 'max-files' });
    expect(await prefetchFiles(host, files, { maxBytes: 350 })).toMatchObject({ files: 3, stopped: 'max-bytes' });
    const ctl = new AbortController();
    ctl.abort();
    expect(await prefetchFiles(host, files, { signal: ctl.signal })).toMatchObject({ files: 0, stopped: 'aborted' });
    host.stalled.add(path.join(dir, 'd1'));
    const t0 = Date.now();
    const r = await prefetchFiles(host, files, { stallMs: 200, concurrency: 8 });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(r.stopped).toBe('stalled');
    expect(r.failed).toBeGreaterThan(0);
    host.unstall();
  });
});
