/**
 * Version 2 layers (what survives a CVMFS publish: no whiteouts in layerfs,
 * a record beside it) and DUCC layers' catalog markers, through CvmfsLayers
 * and a real overlay mount: deletions and opaque dirs act on the layers
 * below, xattrs a publish dropped come back through a copy above, nested
 * catalog markers are never visible; a hostile record is refused naming the
 * field and writes nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseLayerMarker } from '../../src/core/cvmfs/layout.js';
import { lgetxattr, lsetxattr } from '../../src/core/host/sys.js';
import { addLayer } from '../helpers/cvmfs-tree.js';
import { needs } from '../helpers/env.js';
import { layerStackFixture } from '../helpers/layer-stack.js';

const CAP = Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64');
const setup = layerStackFixture('cvmfs-thin-record-');

describe.skipIf(needs({ root: true }))('layers with a record (version 2) and catalog markers, on a real overlay', () => {
  it('deletions and opaque dirs hide what is below, never what the layer itself holds', async () => {
    const { repo, merged } = setup();
    const l1 = addLayer(repo, 'base', { 'etc/gone': 'x', 'etc/keep': 'k', 'dir/a': 'a', 'dir/sub/b': 'b', 'opq/old': 'o', 'opq/sub/deep': 'd' });
    const l2 = addLayer(
      repo,
      'top',
      { 'opq/new': 'n', 'etc/added': 'y' },
      { record: { deleted: ['etc/gone', 'dir'], opaque: ['opq'], xattrs: [], hidden: [] } },
    );
    const { target, how } = await merged([l1, l2]);
    expect(how).toEqual(['masked', 'mask-below', 'clean']);
    expect(fs.readdirSync(path.join(target, 'etc')).sort()).toEqual(['added', 'keep']);
    expect(fs.existsSync(path.join(target, 'dir'))).toBe(false);
    expect(fs.readdirSync(path.join(target, 'opq'))).toEqual(['new']);
  });

  it('xattrs the publish dropped come back on a copy above the layer (owner, mode, times, content kept); the layer is never asked for its xattrs', async () => {
    const { repo, merged, work } = setup();
    const rec = {
      deleted: [],
      opaque: [],
      hidden: [],
      xattrs: [
        { path: 'bin/ping', name: 'security.capability', value: CAP.toString('base64') },
        { path: 'bin/kept', name: 'user.k', value: Buffer.from('v').toString('base64') },
        { path: 'etc', name: 'user.d', value: Buffer.from('dir').toString('base64') },
      ],
    };
    const l1 = addLayer(repo, 'caps', { 'bin/ping': 'ping-binary', 'bin/kept': 'kept', 'etc/x': 'x' }, { record: rec });
    fs.chownSync(path.join(l1.dir, 'bin/ping'), 1000, 1000);
    fs.chmodSync(path.join(l1.dir, 'bin/ping'), 0o4711);
    fs.utimesSync(path.join(l1.dir, 'bin/ping'), 1_500_000_000, 1_500_000_000);
    lsetxattr(path.join(l1.dir, 'bin/kept'), 'user.k', 'v');
    const { target, how } = await merged([l1]);
    expect(how).toEqual(['mask-above', 'masked']);
    const st = fs.lstatSync(path.join(target, 'bin/ping'));
    expect([st.uid, st.gid, st.mode & 0o7777, st.mtimeMs]).toEqual([1000, 1000, 0o4711, 1_500_000_000_000]);
    expect(fs.readFileSync(path.join(target, 'bin/ping'), 'utf8')).toBe('ping-binary');
    expect(lgetxattr(path.join(target, 'bin/ping'), 'security.capability')).toEqual(CAP);
    expect(lgetxattr(path.join(target, 'etc'), 'user.d')?.toString()).toBe('dir');
    expect(lgetxattr(path.join(target, 'bin/kept'), 'user.k')?.toString()).toBe('v');
    // every entry with recorded xattrs is copied (a few files per image), whether CVMFS kept them or not
    const above = path.join(work, 'masks', fs.readdirSync(path.join(work, 'masks'))[0]!, 'above');
    expect(fs.readdirSync(path.join(above, 'bin')).sort()).toEqual(['kept', 'ping']);
    expect(fs.readdirSync(path.join(above, 'etc'))).toEqual([]);
  });

  it('nested catalog markers are never visible: hidden by the record, or found by the scan of a DUCC layer', async () => {
    const { repo, merged } = setup();
    const ducc = addLayer(repo, 'ducc', { '.cvmfscatalog': '', 'usr/bin/x': 'x', 'usr/.cvmfscatalog': '' });
    const ours = addLayer(
      repo,
      'ours',
      { 'big/.cvmfscatalog': '', 'big/f': 'f' },
      { record: { deleted: [], opaque: [], xattrs: [], hidden: ['big/.cvmfscatalog'] } },
    );
    const { target } = await merged([ducc, ours]);
    expect(fs.readdirSync(target).sort()).toEqual(['big', 'usr']);
    expect(fs.readdirSync(path.join(target, 'big'))).toEqual(['f']);
    expect(fs.readdirSync(path.join(target, 'usr'))).toEqual(['bin']);
  });

  it('a record layer without anything to mask is used as is', async () => {
    const { repo, merged } = setup();
    const l = addLayer(repo, 'plain', { a: 'a' }, { record: { deleted: [], opaque: [], xattrs: [], hidden: [] } });
    expect((await merged([l])).how).toEqual(['clean']);
  });

  it.each([
    [
      { deleted: ['../../../../etc/passwd'], opaque: [], xattrs: [], hidden: [] },
      'record.deleted[0]: "../../../../etc/passwd" is not a relative path inside the layer',
    ],
    [{ deleted: [], opaque: ['/abs'], xattrs: [], hidden: [] }, 'record.opaque[0]: "/abs" is not a relative path'],
    [{ deleted: [], opaque: [], xattrs: [], hidden: ['a/./b'] }, 'record.hidden[0]'],
    [
      { deleted: [], opaque: [], xattrs: [{ path: 'x', name: 'trusted.overlay.redirect', value: '' }], hidden: [] },
      'record.xattrs[0].name: "trusted.overlay.redirect" is not a user.*',
    ],
    [{ deleted: [], opaque: [], xattrs: [{ path: 'x', name: 'user.a', value: '%%%' }], hidden: [] }, 'record.xattrs[0].value: not base64'],
    [{ deleted: 'x' }, 'record.deleted: not a list'],
    ['nope', 'record: missing or not an object'],
  ])('a hostile record is refused naming the field, and nothing is written (%#)', async (record, msg) => {
    const { repo, layers, work, manifest } = setup();
    const l = addLayer(repo, 'bad', { a: 'a' }, { record });
    const m = manifest([addLayer(repo, 'low', { b: 'b' }), l]);
    const err = await layers.resolveThin(m).then(
      () => null,
      (e: unknown) => e as { code: string; message: string },
    );
    expect(err?.code).toBe('CVMFS_THIN_BAD_LAYER_RECORD');
    expect(err?.message).toContain(msg);
    expect(err?.message).toContain('cvmfs-thin-layer.json');
    expect(fs.existsSync(path.join(work, 'masks'))).toBe(false);
  });

  it('a marker for another digest or of another schema is not ours (the layer is scanned)', () => {
    const hex = 'a'.repeat(64);
    expect(
      parseLayerMarker(JSON.stringify({ schema: 'cvmfs-thin/layer', digest: `sha256:${'b'.repeat(64)}`, whiteouts: 'record', record: {} }), hex),
    ).toBeNull();
    expect(parseLayerMarker('{not json', hex)).toBeNull();
    expect(parseLayerMarker(JSON.stringify({ schema: 'other', digest: `sha256:${hex}` }), hex)).toBeNull();
  });
});
