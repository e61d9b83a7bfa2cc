/**
 * The extractor's `record` mode: a layer directory with nothing a CVMFS
 * publish interprets or drops (no `.wh.*` files, no 0/0 devices, no
 * trusted.overlay.opaque), and the deletions, opaque dirs and xattrs returned
 * for the layer's record.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { llistxattr } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';
import { extractBuf, freshDirs, paxEntry, rawEntry, snapshot, tar, type Thread, whiteoutEntries } from './helpers.js';

const base = tempDir('cvmfs-thin-record-');
const fresh = freshDirs(base);

const CAP = Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64');

const layer = tar(
  ...whiteoutEntries(),
  rawEntry({ name: 'deep/er/.wh.x' }),
  paxEntry([
    ['SCHILY.xattr.security.capability', CAP],
    ['SCHILY.xattr.trusted.overlay.opaque', 'y'],
  ]),
  rawEntry({ name: 'bin/ping', mode: 0o755 }, 'ping'),
  paxEntry([['SCHILY.xattr.user.note', 'n1']]),
  rawEntry({ name: 'note', mode: 0o644 }, 'note'),
  rawEntry({ name: 'note2', type: '1', linkname: 'note' }),
);

describe('whiteouts: record mode', () => {
  // the layer has a security.capability xattr (and trusted.overlay.opaque in overlay mode)
  const xattrRoot = needs({ root: 'security.* and trusted.* xattrs' });

  it.skipIf(xattrRoot).each<Thread>(['worker', 'inline'])('writes no whiteout of any kind and returns the record (%s)', async (thread) => {
    const dest = fresh();
    const res = await extractBuf(layer, { dest, whiteouts: 'record', thread });
    expect(res).toMatchObject({ whiteouts: 3, opaques: 1, skipped: 2 });
    expect(res.record).toEqual({
      deleted: ['d/gone', 'deep/er/x', 'top'],
      opaque: ['o'],
      xattrs: [
        { path: 'bin/ping', name: 'security.capability', value: CAP.toString('base64') },
        { path: 'note', name: 'user.note', value: Buffer.from('n1').toString('base64') },
        { path: 'note2', name: 'user.note', value: Buffer.from('n1').toString('base64') },
      ],
    });
    const snap = snapshot(dest);
    expect(Object.keys(snap).filter((k) => k.split('/').some((c) => c.startsWith('.wh.')))).toEqual([]);
    for (const [k, v] of Object.entries(snap)) expect(v.type, k).not.toBe('char');
    expect(llistxattr(path.join(dest, 'o'))).toEqual([]);
    // parents of whiteouts exist, as in overlay mode
    expect(fs.statSync(path.join(dest, 'deep/er')).isDirectory()).toBe(true);
    expect(fs.readFileSync(path.join(dest, 'o/new'), 'utf8')).toBe('new');
  });

  it('a whiteout removes what the same layer wrote before it and the deletion stays recorded; a later entry comes back', async () => {
    const dest = fresh();
    const res = await extractBuf(
      tar(
        rawEntry({ name: 'y/', type: '5' }),
        rawEntry({ name: 'y/z' }, 'z'),
        rawEntry({ name: '.wh.y' }),
        rawEntry({ name: '.wh.x' }),
        rawEntry({ name: 'x' }, 'back'),
      ),
      {
        dest,
        whiteouts: 'record',
      },
    );
    expect(fs.existsSync(path.join(dest, 'y'))).toBe(false);
    expect(fs.readFileSync(path.join(dest, 'x'), 'utf8')).toBe('back');
    expect(res.record?.deleted).toEqual(['x', 'y']);
  });

  it('xattrs of a file removed or replaced later in the layer are not recorded', async () => {
    const dest = fresh();
    const res = await extractBuf(
      tar(
        paxEntry([['SCHILY.xattr.user.a', '1']]),
        rawEntry({ name: 'f' }, 'a'),
        rawEntry({ name: 'f' }, 'b'),
        paxEntry([['SCHILY.xattr.user.b', '2']]),
        rawEntry({ name: 'g' }, 'g'),
        rawEntry({ name: '.wh.g' }),
      ),
      {
        dest,
        whiteouts: 'record',
      },
    );
    expect(res.record?.xattrs).toEqual([]);
    expect(res.record?.deleted).toEqual(['g']);
  });

  it('a whiteout name that is not UTF-8 is refused naming the entry', async () => {
    const dest = fresh();
    const name = Buffer.concat([Buffer.from('.wh.'), Buffer.from([0xff, 0xfe])]);
    await expect(extractBuf(tar(rawEntry({ name })), { dest, whiteouts: 'record' })).rejects.toThrow(/not UTF-8/);
  });

  it.skipIf(xattrRoot)('other modes return no record', async () => {
    const dest = fresh();
    const res = await extractBuf(layer, { dest, whiteouts: 'overlay' });
    expect(res.record).toBeUndefined();
  });
});
