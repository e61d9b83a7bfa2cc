/** Pure parts of the graph driver: request decoding, options, error mapping, lower computation. No root needed. */
import { describe, expect, it } from 'vitest';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  ThinError,
  ThinManifestError,
  UnavailableError,
} from '../../src/core/errors/errors.js';
import { UnsafeTarError } from '../../src/core/tar/errors.js';
import { httpStatus, parseJsonBody, toHttpError } from '../../src/edge/plugin-http.js';
import { checkLayerStorageOpt, parseInitOptions } from '../../src/graphdriver/options.js';
import { isMethod, METHODS, parseApplyDiffQuery, parseIdMaps, parseInitRequest, parseLayerRequest, validateLayerId } from '../../src/graphdriver/protocol.js';
import { MAX_MOUNT_DATA, overlayMountData } from '../../src/core/host/overlay-mount.js';
import { type ChainNode } from '../../src/core/stack/index.js';
import { MAX_LOWERS, overlaySpec, type StackEntry, stackOf } from '../../src/graphdriver/stack.js';
import { idMapText } from '../../src/core/host/userns.js';

const ID = 'a'.repeat(64);

describe('request decoding', () => {
  it('treats an empty body (Plugin.Activate, Capabilities) as {}', () => {
    expect(parseJsonBody(Buffer.alloc(0))).toEqual({});
    expect(parseJsonBody('  \n')).toEqual({});
    expect(parseJsonBody('null')).toEqual({});
  });
  it('refuses bodies that are not a JSON object', () => {
    expect(() => parseJsonBody('{"ID":')).toThrow(/not valid JSON/);
    expect(() => parseJsonBody('[1]')).toThrow(/JSON object/);
    expect(() => parseJsonBody('"x"')).toThrow(/JSON object/);
  });
  it('decodes a Create as dockerd sends it (empty values omitted)', () => {
    expect(parseLayerRequest(parseJsonBody(`{"ID":"${ID}"}\n`))).toEqual({ id: ID, parent: '', mountLabel: '', storageOpt: {} });
    expect(parseLayerRequest({ ID: `${ID}-init`, Parent: ID, StorageOpt: { size: '10M' } })).toEqual({
      id: `${ID}-init`,
      parent: ID,
      mountLabel: '',
      storageOpt: { size: '10M' },
    });
  });
  it('refuses layer IDs that could name a path outside the layer directory', () => {
    for (const bad of ['', '..', '../x', 'a/b', '.hidden', '-x', 'x'.repeat(129), 'a\0b', ' a', 'a b']) {
      expect(() => validateLayerId(bad), bad).toThrow(InvalidArgumentError);
    }
    expect(() => parseLayerRequest({})).toThrow(/ID "" is not a valid layer ID/);
    expect(() => parseLayerRequest({ ID, Parent: '../../etc' })).toThrow(/Parent/);
    expect(() => parseLayerRequest({ ID: 5 })).toThrow(/ID must be a string/);
    expect(() => parseLayerRequest({ ID, StorageOpt: { size: 5 } })).toThrow(/StorageOpt.size/);
    expect(validateLayerId(`${ID}-init`)).toBe(`${ID}-init`);
  });
  it('reads ApplyDiff parameters from the query string, parent may be empty', () => {
    expect(parseApplyDiffQuery(new URLSearchParams(`id=${ID}&parent=`))).toEqual({ id: ID, parent: '' });
    expect(parseApplyDiffQuery(new URLSearchParams(`id=${ID}-init&parent=${ID}`))).toEqual({ id: `${ID}-init`, parent: ID });
    expect(() => parseApplyDiffQuery(new URLSearchParams('parent='))).toThrow(/id "" is not a valid/);
    expect(() => parseApplyDiffQuery(new URLSearchParams(`id=${ID}&parent=..%2Fx`))).toThrow(/parent/);
  });
  it('decodes Init as dockerd 20.10 sends it, with and without userns maps', () => {
    expect(parseInitRequest({ Home: '/var/lib/docker/cvmfs', Opts: null, UIDMaps: null, GIDMaps: null })).toEqual({
      home: '/var/lib/docker/cvmfs',
      opts: [],
      uidMaps: [],
      gidMaps: [],
    });
    const m = [{ container_id: 0, host_id: 100000, size: 65536 }];
    expect(parseInitRequest({ Home: '/r/100000.100000/cvmfs', Opts: ['cvmfs.thin-images=true'], UIDMaps: m, GIDMaps: m })).toEqual({
      home: '/r/100000.100000/cvmfs',
      opts: ['cvmfs.thin-images=true'],
      uidMaps: [{ containerId: 0, hostId: 100000, size: 65536 }],
      gidMaps: [{ containerId: 0, hostId: 100000, size: 65536 }],
    });
    expect(() => parseInitRequest({ Home: 'relative' })).toThrow(/absolute/);
    expect(() => parseInitRequest({})).toThrow(/Home/);
    expect(() => parseInitRequest({ Home: '/h', Opts: [1] })).toThrow(/Opts/);
    expect(() => parseInitRequest({ Home: '/h', UIDMaps: m })).toThrow(/both/);
  });
  it('accepts the documented CamelCase id map keys too, and refuses overlapping or empty ranges', () => {
    expect(parseIdMaps([{ ContainerID: 0, HostID: 5000, Size: 10 }], 'UIDMaps')).toEqual([{ containerId: 0, hostId: 5000, size: 10 }]);
    expect(() => parseIdMaps([{ container_id: 0, host_id: 1, size: 0 }], 'U')).toThrow(/size must be at least 1/);
    expect(() =>
      parseIdMaps(
        [
          { container_id: 0, host_id: 1000, size: 10 },
          { container_id: 5, host_id: 5000, size: 10 },
        ],
        'U',
      ),
    ).toThrow(/overlap/);
    expect(() => parseIdMaps([{ container_id: -1, host_id: 1, size: 1 }], 'U')).toThrow(/integer/);
    expect(() => parseIdMaps({}, 'U')).toThrow(/array/);
    expect(
      idMapText([
        { containerId: 0, hostId: 100000, size: 65536 },
        { containerId: 65536, hostId: 1, size: 1 },
      ]),
    ).toBe('0 100000 65536\n65536 1 1\n');
  });
  it('knows every endpoint of the protocol', () => {
    expect(METHODS).toHaveLength(16);
    for (const m of ['Plugin.Activate', 'GraphDriver.ApplyDiff', 'GraphDriver.Capabilities', 'GraphDriver.DiffSize']) expect(isMethod(m)).toBe(true);
    expect(isMethod('GraphDriver.Nope')).toBe(false);
    expect(isMethod('VolumeDriver.Mount')).toBe(false);
  });
});

describe('storage options', () => {
  it('accepts our keys with or without a cvmfs. prefix, and the 2018 plugin options', () => {
    expect(
      parseInitOptions([
        'cvmfs.repository=unpacked.cern.ch',
        'absolute-mountpoint=/srv/cvmfs/unpacked.cern.ch',
        'cvmfs.cvmfs-root=/srv/cvmfs',
        'allowed-repositories=unpacked.cern.ch,sft.cern.ch',
        'thin-images=false',
        'idmapped-layers=require',
        'cvmfsMountMethod=external',
        'overlay2.override_kernel_check=true',
      ]),
    ).toEqual({
      repository: 'unpacked.cern.ch',
      absoluteMountpoint: '/srv/cvmfs/unpacked.cern.ch',
      cvmfsRoot: '/srv/cvmfs',
      allowedRepositories: ['unpacked.cern.ch', 'sft.cern.ch'],
      thinImages: false,
      idmappedLayers: 'require',
    });
    expect(parseInitOptions([])).toEqual({});
  });
  it('refuses unknown options and bad values clearly', () => {
    expect(() => parseInitOptions(['overlay2.size=10G'])).toThrow(/storage option "overlay2.size=10G": unknown option \(known: repository/);
    expect(() => parseInitOptions(['nonsense'])).toThrow(/key=value/);
    expect(() => parseInitOptions(['cvmfsMountMethod=internal'])).toThrow(/does not run cvmfs2 itself/);
    expect(() => parseInitOptions(['repository=Not A Repo'])).toThrow(/not a CVMFS repository name/);
    expect(() => parseInitOptions(['cvmfs-root=relative'])).toThrow(/absolute path/);
    expect(() => parseInitOptions(['thin-images=maybe'])).toThrow(/boolean/);
    expect(() => parseInitOptions(['allowed-repositories='])).toThrow(/no repository/);
    expect(() => parseInitOptions(['idmapped-layers=sometimes'])).toThrow(/auto, off or require/);
  });
  it('refuses per-container storage options instead of ignoring them', () => {
    expect(() => checkLayerStorageOpt({})).not.toThrow();
    expect(() => checkLayerStorageOpt({ size: '10M' })).toThrow(/"size" not supported/);
  });
});

describe('error mapping (the one place)', () => {
  it('maps every error kind to a status and an Err body with a Code field', () => {
    const cases: [Error, number][] = [
      [new InvalidArgumentError('bad'), 400],
      [new NotFoundError('layer x does not exist'), 404],
      [new AlreadyExistsError('dup'), 409],
      [new FailedPreconditionError('no init'), 412],
      [new UnavailableError('gone'), 503],
      [new InternalError('boom'), 500],
      [new Error('plain'), 500],
      [new ThinManifestError('layers[0].url', 'bad'), 400],
      [new UnsafeTarError('../x', 'path-escape', 'leaves the layer'), 400],
    ];
    for (const [e, status] of cases) {
      const h = toHttpError(e);
      expect(h.status, e.message).toBe(status);
      // dockerd decodes Err only and shows it as is; the code is a field of its own
      expect(h.body).toEqual({ Err: e.message, Code: ThinError.is(e) ? e.code : 'CVMFS_THIN_INTERNAL' });
    }
    expect(toHttpError('a string').body.Err).toBe('a string');
    expect(toHttpError(new Error('')).body.Err).toMatch(/CVMFS_THIN_INTERNAL/);
    expect(httpStatus('not-found')).toBe(404);
    expect(toHttpError(new UnsafeTarError('../x', 'path-escape', 'leaves')).code).toBe('CVMFS_THIN_UNSAFE_TAR');
  });
});

describe('lower computation', () => {
  /** The layer records as the graph driver keeps them, seen through its chain-walk adapter. */
  interface StackLayer {
    id: string;
    parent: string;
    link: string;
    thin?: { lowers: { link: string; dir: string }[] };
  }
  const layers = new Map<string, StackLayer>();
  const add = (l: StackLayer) => layers.set(l.id, l);
  add({ id: 'base', parent: '', link: '1' });
  add({ id: 'mid', parent: 'base', link: '2' });
  add({ id: 'top', parent: 'mid', link: '3' });
  add({
    id: 'thin',
    parent: '',
    link: '4',
    thin: {
      lowers: [
        { link: '5', dir: '/cvmfs/r/.layers/bb/b/layerfs' },
        { link: '6', dir: '/cvmfs/r/.layers/aa/a/layerfs' },
      ],
    },
  });
  add({ id: 'c-init', parent: 'thin', link: '7' });
  add({ id: 'c', parent: 'c-init', link: '8' });
  add({ id: 'loop1', parent: 'loop2', link: '9' });
  add({ id: 'loop2', parent: 'loop1', link: 'a' });
  const get = (id: string): ChainNode | undefined => {
    const l = layers.get(id);
    if (!l) return undefined;
    if (l.thin) return { parent: l.parent, lowers: l.thin.lowers.map((t) => ({ link: t.link, real: t.dir })), external: true, terminal: true };
    return { parent: l.parent, lowers: [{ link: l.link, real: `/home/layers/${id}/diff` }], external: false, terminal: false };
  };
  const data = (id: string, stack: readonly StackEntry[], indexOff: boolean) => overlayMountData(overlaySpec('/home', id, stack, indexOff));

  it('stacks local diffs nearest first down to the base', () => {
    expect(stackOf(get, '', false)).toEqual([]);
    expect(stackOf(get, 'top', false).map((s) => s.rel)).toEqual(['l/3', 'l/2', 'l/1']);
    expect(stackOf(get, 'top', false)[0]).toEqual({ rel: 'l/3', real: '/home/layers/top/diff', external: false, layer: 'top' });
  });
  it('replaces a thin layer by its CVMFS directories and never uses its own diff (thin.json)', () => {
    const s = stackOf(get, 'c', false);
    expect(s.map((e) => e.rel)).toEqual(['l/8', 'l/7', 'l/5', 'l/6']);
    expect(s.map((e) => e.real)).not.toContain('/home/layers/thin/diff');
    expect(s.filter((e) => e.external).map((e) => e.real)).toEqual(['/cvmfs/r/.layers/bb/b/layerfs', '/cvmfs/r/.layers/aa/a/layerfs']);
    expect(stackOf(get, 'c', true).map((e) => e.rel)).toEqual(['l/8', 'l/7', 'm/5', 'm/6']);
    // the thin base of a stack: the layer its external lowers come from
    expect([...new Set(s.filter((e) => e.external).map((e) => e.layer))]).toEqual(['thin']);
    expect(stackOf(get, 'top', false).filter((e) => e.external)).toEqual([]);
  });
  it('reports broken and looping parent chains', () => {
    expect(() => stackOf(get, 'missing', false)).toThrow(/broken: layer missing is missing/);
    expect(() => stackOf(get, 'loop1', false)).toThrow(/loops/);
  });
  it('builds relative overlay data; 500 lowers fit in one page', () => {
    expect(data('c', stackOf(get, 'c', false), true)).toBe('index=off,workdir=layers/c/work,upperdir=layers/c/diff,lowerdir=l/8:l/7:l/5:l/6');
    expect(overlaySpec('/home', 'c', stackOf(get, 'c', false), false)).toMatchObject({ target: '/home/layers/c/merged', relativeTo: '/home', options: [] });
    const many = Array.from({ length: MAX_LOWERS }, (_, i) => ({ rel: `l/${(i + 1).toString(36)}`, real: `/x/${i}`, external: false, layer: String(i) }));
    const d = data(ID, many, true);
    expect(Buffer.byteLength(d)).toBeLessThan(MAX_MOUNT_DATA);
    // links made late in a long-lived Home are longer, still within the page: 4 base36 chars = 1.6 million links
    const late = many.map((m, i) => ({ ...m, rel: `m/${(1_600_000 - i).toString(36)}` }));
    expect(Buffer.byteLength(data(`${ID}-init`, late, true))).toBeLessThan(MAX_MOUNT_DATA);
    expect(() => data('x', [], false)).toThrow(/no lower layers/);
  });
});
