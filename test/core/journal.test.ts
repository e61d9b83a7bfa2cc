import { closeSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { crc32, decodeRecords, encodeRecord, Journal } from '../../src/core/state/journal.js';
import { tempDir } from '../helpers/env.js';

type Rec = { k: string; v: number | null };
const fatal = (e: Error) => {
  throw e;
};

async function openKV(dir: string) {
  const o = await Journal.open<Rec>({ dir, name: 'kv', onFatal: fatal, compactAfterBytes: 1 << 30 });
  const kv = new Map<string, number>(Object.entries((o.state as Record<string, number> | null) ?? {}));
  for (const r of o.records) {
    if (r.v === null) kv.delete(r.k);
    else kv.set(r.k, r.v);
  }
  o.journal.onSnapshot(() => Object.fromEntries(kv));
  const set = (k: string, v: number | null) => {
    if (v === null) kv.delete(k);
    else kv.set(k, v);
    return o.journal.append({ k, v });
  };
  return { ...o, kv, set };
}

describe('journal', () => {
  it('crc32 matches the standard check value', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
  });

  it('replays acknowledged records after reopening', async () => {
    const dir = tempDir();
    const a = await openKV(dir);
    await Promise.all([a.set('x', 1), a.set('y', 2), a.set('x', 3)]);
    await a.set('y', null);
    await a.journal.close();
    const b = await openKV(dir);
    expect(Object.fromEntries(b.kv)).toEqual({ x: 3 });
    await b.journal.close();
  });

  it('shares one fdatasync among concurrent appends (group commit)', async () => {
    const dir = tempDir();
    const a = await openKV(dir);
    await a.set('warm', 0);
    const before = a.journal.commits;
    await Promise.all(Array.from({ length: 50 }, (_, i) => a.set(`k${i}`, i)));
    expect(a.journal.commits - before).toBeLessThan(10);
    await a.journal.close();
  });

  it('drops a torn or corrupt tail and keeps the valid prefix', async () => {
    const dir = tempDir();
    const a = await openKV(dir);
    for (let i = 0; i < 5; i++) await a.set(`k${i}`, i);
    await a.journal.close();
    const file = path.join(dir, 'kv.journal');
    const valid = decodeRecords(readFileSync(file)).validBytes;
    // a torn write: half a record where the next one would go (the file is preallocated)
    const torn = encodeRecord({ k: 'torn', v: 9 }).subarray(0, 7);
    const fd = openSync(file, 'r+');
    writeSync(fd, torn, 0, torn.length, valid);
    closeSync(fd);
    let b = await openKV(dir);
    expect(b.discardedBytes).toBeGreaterThan(0);
    expect(b.kv.size).toBe(5);
    expect(decodeRecords(readFileSync(file)).validBytes).toBe(valid);
    expect(
      readFileSync(file)
        .subarray(valid)
        .every((x) => x === 0),
    ).toBe(true);
    await b.set('after-torn', 1);
    await b.journal.close();
    // a flipped byte inside the last record: that record and nothing after it is dropped
    const buf = readFileSync(file);
    const end = decodeRecords(buf).validBytes;
    buf[end - 3] = buf[end - 3]! ^ 0xff;
    writeFileSync(file, buf);
    b = await openKV(dir);
    expect([...b.kv.keys()].sort()).toEqual(['k0', 'k1', 'k2', 'k3', 'k4']);
    await b.set('after', 1);
    await b.journal.close();
    expect(Object.fromEntries((await openKV(dir)).kv)).toMatchObject({ after: 1, k4: 4 });
  });

  it('compacts into the state file; replaying an old journal over a newer state converges', async () => {
    const dir = tempDir();
    const a = await openKV(dir);
    for (let i = 0; i < 20; i++) await a.set(`k${i % 4}`, i);
    await a.set('k0', null);
    const journalBefore = readFileSync(path.join(dir, 'kv.journal'));
    await a.journal.compactNow();
    expect(statSync(path.join(dir, 'kv.journal')).size).toBe(0);
    await a.journal.close();
    const want = { k1: 17, k2: 18, k3: 19 };
    expect(Object.fromEntries((await openKV(dir)).kv)).toEqual(want);
    // crash between the state rename and the journal truncation
    writeFileSync(path.join(dir, 'kv.journal'), journalBefore);
    expect(Object.fromEntries((await openKV(dir)).kv)).toEqual(want);
  });

  it('refuses an unreadable state file instead of starting empty', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'kv.state'), '{not json');
    const err = await openKV(dir).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'failed-precondition', code: 'CVMFS_THIN_BAD_STATE' });
    expect((err as Error).message).toContain(`${path.join(dir, 'kv.state')}: unreadable state file`);
  });

  it('decodes nothing from garbage', () => {
    expect(decodeRecords(Buffer.from('garbage that is not a journal')).validBytes).toBe(0);
  });
});
