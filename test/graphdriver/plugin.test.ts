/**
 * The plugin as a real process (`cvmfs-thin graphdriver`), driven with raw
 * HTTP requests as dockerd makes them: overlay mounts and reference counts,
 * Diff/Changes of a container layer, thin layers, hostile tars and
 * manifests, plugin restarts and Cleanup. Needs root (mounts).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { needs } from '../helpers/env.js';
import { tarOf } from '../helpers/oci-image.js';
import { type Plugin, pluginCall, removeTestDir, shortTempDir, startPlugin } from './harness.js';

const ID = (n: number) => `${n.toString(16).padStart(63, '0')}e`;
const mounted = (p: string) => readMountinfo().some((m) => m.mountPoint === p);

/** Entries of a tar stream (name → content for files, type otherwise). */
async function listTar(buf: Buffer): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const x = tarStream.extract();
  const done = new Promise<void>((resolve, reject) => {
    x.on('entry', (h, s, next) => {
      const chunks: Buffer[] = [];
      s.on('data', (c: unknown) => chunks.push(c as Buffer));
      s.on('end', () => {
        out[h.name] = h.type === 'file' ? Buffer.concat(chunks).toString() : h.type;
        next();
      });
    });
    x.on('finish', resolve);
    x.on('error', reject);
  });
  x.end(buf);
  await done;
  return out;
}

/** A raw tar with one hand-made header (names and types tar-stream would refuse to write). */
function rawTar(entries: { name: string; type?: string; linkname?: string; content?: string }[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const h = Buffer.alloc(512);
    h.write(e.name, 0, 100, 'utf8');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    const size = Buffer.byteLength(e.content ?? '');
    h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
    h.write('00000000000\0', 136);
    h.write(e.type ?? '0', 156);
    if (e.linkname) h.write(e.linkname, 157, 100, 'utf8');
    h.write('ustar\x0000', 257);
    h.write('        ', 148);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    blocks.push(h);
    if (size) {
      const d = Buffer.alloc(Math.ceil(size / 512) * 512);
      d.write(e.content!);
      blocks.push(d);
    }
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

describe.skipIf(needs({ root: true, binaries: ['unshare'] }))('graph driver plugin process (raw protocol, root)', () => {
  const name = `cvmfs-gd-plugin-${process.pid}`;
  let dir: string;
  let home: string;
  let repo: string;
  let outside: string;
  let plugin: Plugin;
  const call = (m: string, body?: unknown, o?: Parameters<typeof pluginCall>[3]) => pluginCall(plugin.socket, m, body, o);
  const args = () => ['--state-dir', path.join(dir, 'state'), '--absolute-mountpoint', repo];

  beforeAll(async () => {
    dir = shortTempDir('gdp-');
    home = path.join(dir, 'home');
    repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
    outside = path.join(dir, 'outside');
    mkdirSync(outside, { recursive: true });
    writeFileSync(path.join(outside, 'sentinel'), 'untouched');
    mkdirSync(repo, { recursive: true });
    plugin = await startPlugin(name, args());
    const r = await call('GraphDriver.Init', { Home: home, Opts: null, UIDMaps: null, GIDMaps: null });
    expect(r.status, r.body.toString()).toBe(200);
  });
  afterAll(async () => {
    if (plugin) {
      await call('GraphDriver.Cleanup', {}).catch(() => undefined);
      await plugin.stop();
    }
    if (dir) removeTestDir(dir);
  });

  const apply = (id: string, parent: string, tar: Buffer) =>
    call('GraphDriver.ApplyDiff', undefined, { query: `id=${id}&parent=${parent}`, raw: tar, chunked: true });

  it('mounts a layer with lowers on Get, counts references, unmounts on the last Put', async () => {
    await call('GraphDriver.Create', { ID: ID(1) });
    expect(
      (
        await apply(
          ID(1),
          '',
          await tarOf([
            { path: 'etc/', type: 'dir' },
            { path: 'etc/motd', content: 'base\n' },
            { path: 'etc/old', content: 'old' },
          ]),
        )
      ).status,
    ).toBe(200);
    await call('GraphDriver.Create', { ID: ID(2), Parent: ID(1) });
    const r = await apply(
      ID(2),
      ID(1),
      await tarOf([
        { path: 'etc/', type: 'dir' },
        { path: 'etc/.wh.old', content: '' },
        { path: 'etc/new', content: 'new' },
      ]),
    );
    expect(r.status, r.body.toString()).toBe(200);
    await call('GraphDriver.CreateReadWrite', { ID: `${ID(3)}-init`, Parent: ID(2) });
    await call('GraphDriver.CreateReadWrite', { ID: ID(3), Parent: `${ID(3)}-init` });
    const merged = path.join(home, 'layers', ID(3), 'merged');
    const g1 = (await call('GraphDriver.Get', { ID: ID(3) })).json()['Dir'];
    expect(g1).toBe(merged);
    expect(mounted(merged)).toBe(true);
    expect(readFileSync(path.join(merged, 'etc/motd'), 'utf8')).toBe('base\n');
    expect(readFileSync(path.join(merged, 'etc/new'), 'utf8')).toBe('new');
    expect(existsSync(path.join(merged, 'etc/old'))).toBe(false); // deleted in the upper image layer
    expect(existsSync(path.join(merged, 'etc/.wh.old'))).toBe(false);
    expect((await call('GraphDriver.Get', { ID: ID(3) })).json()['Dir']).toBe(merged);
    expect(readFileSync(path.join(home, 'layers', ID(3), 'refs'), 'utf8').trim()).toBe('2');
    await call('GraphDriver.Put', { ID: ID(3) });
    expect(mounted(merged)).toBe(true);
    await call('GraphDriver.Put', { ID: ID(3) });
    expect(mounted(merged)).toBe(false);
  });

  it("answers Diff, Changes and DiffSize with only the container layer's own changes", async () => {
    const merged = (await call('GraphDriver.Get', { ID: ID(3) })).json()['Dir'] as string;
    writeFileSync(path.join(merged, 'etc/motd'), 'changed\n');
    writeFileSync(path.join(merged, 'added'), 'added!');
    const { rmSync } = await import('node:fs');
    rmSync(path.join(merged, 'etc/new'));
    const ch = (await call('GraphDriver.Changes', { ID: ID(3), Parent: `${ID(3)}-init` })).json()['Changes'];
    expect(ch).toEqual([
      { Path: '/added', Kind: 1 },
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/motd', Kind: 0 },
      { Path: '/etc/new', Kind: 2 },
    ]);
    const d = await call('GraphDriver.Diff', { ID: ID(3), Parent: `${ID(3)}-init` });
    expect(d.status).toBe(200);
    const entries = await listTar(d.body);
    expect(entries['added']).toBe('added!');
    expect(entries['etc/motd']).toBe('changed\n');
    expect(entries['etc/.wh.new']).toBe(''); // an empty whiteout entry
    expect(Object.keys(entries).some((n) => n.includes('old') || n === 'etc/passwd')).toBe(false);
    expect((await call('GraphDriver.DiffSize', { ID: ID(3), Parent: `${ID(3)}-init` })).json()['Size']).toBe(6 + 8);
    await call('GraphDriver.Put', { ID: ID(3) });
  });

  it('runs thin layers from the CVMFS tree; their own thin.json is not visible to children', async () => {
    const l1 = addLayer(repo, 'thin-base', { 'bin/tool': 'tool', 'etc/gone': 'x', 'etc/kept': 'k' });
    const l2 = addLayer(repo, 'thin-top', { 'data/only-in-cvmfs': 'cvmfs!', 'etc/.wh.gone': '' });
    await call('GraphDriver.Create', { ID: ID(10) });
    const r = await apply(ID(10), '', await tarOf([{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l1, l2]) }]));
    expect(r.status, r.body.toString()).toBe(200);
    await call('GraphDriver.CreateReadWrite', { ID: `${ID(11)}-init`, Parent: ID(10) });
    await call('GraphDriver.CreateReadWrite', { ID: ID(11), Parent: `${ID(11)}-init` });
    const m = (await call('GraphDriver.Get', { ID: ID(11) })).json()['Dir'] as string;
    expect(readFileSync(path.join(m, 'data/only-in-cvmfs'), 'utf8')).toBe('cvmfs!');
    expect(readFileSync(path.join(m, 'bin/tool'), 'utf8')).toBe('tool');
    expect(existsSync(path.join(m, 'etc/gone'))).toBe(false); // DUCC keeps .wh. files; the driver masks them
    expect(readdirSync(path.join(m, 'etc'))).toEqual(['kept']);
    expect(existsSync(path.join(m, 'thin.json'))).toBe(false);
    writeFileSync(path.join(m, 'data/mine'), 'local');
    const d = await listTar((await call('GraphDriver.Diff', { ID: ID(11), Parent: `${ID(11)}-init` })).body);
    expect(d).toEqual({ 'data/': 'directory', 'data/mine': 'local' });
    // the CVMFS tree is never written to
    expect(existsSync(path.join(l2.dir, 'data/mine'))).toBe(false);
    await call('GraphDriver.Put', { ID: ID(11) });
    // the thin layer itself: thin.json, for docker save
    const own = (await call('GraphDriver.Get', { ID: ID(10) })).json()['Dir'] as string;
    expect(readdirSync(own)).toEqual(['thin.json']);
    const td = await listTar((await call('GraphDriver.Diff', { ID: ID(10) })).body);
    expect(Object.keys(td)).toEqual(['thin.json']);
  });

  it('refuses bad thin manifests clearly and keeps serving', async () => {
    const hex = 'd'.repeat(64);
    const cases: [string, RegExp][] = [
      ['{"version":"1.0","layers":[', /thin image manifest: \(file\): is not valid JSON/],
      ['{"version":"2.0","layers":[]}', /version: 2.0 is not supported/],
      [JSON.stringify({ version: '1.0', layers: [{ digest: hex, url: `cvmfs://unpacked.cern.ch/../../etc` }] }), /layers\[0\]\.url: .*"\.\." segment/],
      [JSON.stringify({ version: '1.0', layers: [{ digest: 'nothex' }] }), /layers\[0\]\.digest/],
      [JSON.stringify({ version: '1.0', layers: [{ digest: hex }] }), /layers\[0\]\.url: layer .* does not exist in CVMFS/],
    ];
    // a layer directory that is a symlink leaving the repository
    mkdirSync(path.join(repo, '.layers', 'ee', 'e'.repeat(64)), { recursive: true });
    symlinkSync(outside, path.join(repo, '.layers', 'ee', 'e'.repeat(64), 'layerfs'));
    cases.push([JSON.stringify({ version: '1.0', layers: [{ digest: 'e'.repeat(64) }] }), /resolves to .*outside repository unpacked.cern.ch/]);
    for (const [i, [text, re]] of cases.entries()) {
      const id = ID(20 + i);
      await call('GraphDriver.Create', { ID: id });
      const r = await apply(id, '', await tarOf([{ path: 'thin.json', content: text }]));
      expect(r.status, text).toBeGreaterThanOrEqual(400);
      expect(r.json()['Err'], text).toMatch(re);
      expect(readdirSync(path.join(home, 'layers', id, 'diff'))).toEqual([]);
      expect((await call('GraphDriver.Remove', { ID: id })).status).toBe(200);
    }
    expect((await call('GraphDriver.Status', {})).status).toBe(200);
  });

  it('refuses hostile tars without touching anything outside the layer', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['path escape', rawTar([{ name: '../../outside/evil', content: 'x' }]), /leaves|escape/i],
      ['hardlink out', rawTar([{ name: 'passwd', type: '1', linkname: '../../../../etc/passwd' }]), /hardlink/i],
      ['hardlink to missing', rawTar([{ name: 'h', type: '1', linkname: 'nope' }]), /hardlink/i],
      ['truncated', rawTar([{ name: 'big', content: 'x'.repeat(2000) }]).subarray(0, 1024), /truncated|tar/i],
      ['bad checksum', Buffer.concat([Buffer.alloc(512, 0x41), Buffer.alloc(1024)]), /checksum|header|tar/i],
      ['bad whiteout', rawTar([{ name: '.wh..', content: '' }]), /whiteout/i],
    ];
    // a symlink to an absolute path outside, then a file through it: lands inside the layer (chroot semantics) or is refused
    cases.push([
      'write through symlink',
      rawTar([
        { name: 'ln', type: '2', linkname: outside },
        { name: 'ln/sentinel', content: 'pwned' },
      ]),
      /./,
    ]);
    const id = ID(40);
    await call('GraphDriver.Create', { ID: id });
    for (const [what, tar, re] of cases) {
      const r = await apply(id, '', tar);
      if (r.status === 200) {
        expect(what).toBe('write through symlink');
      } else {
        expect(r.status, what).toBe(400);
        expect(r.json()['Err'], what).toMatch(re);
        expect(readdirSync(path.join(home, 'layers', id, 'diff')), what).toEqual([]);
      }
      expect(readFileSync(path.join(outside, 'sentinel'), 'utf8'), what).toBe('untouched');
      expect(readdirSync(outside), what).toEqual(['sentinel']);
      if (r.status === 200) {
        await call('GraphDriver.Remove', { ID: id });
        await call('GraphDriver.Create', { ID: id });
      }
    }
    expect(statSync('/etc/passwd').nlink).toBe(1);
    expect((await call('GraphDriver.Status', {})).status).toBe(200);
    // a large valid tar still streams through after the failures
    const big = await tarOf([{ path: 'blob', content: Buffer.alloc(8 << 20, 7) }]);
    const ok = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${id}&parent=`, raw: Readable.from([big.subarray(0, 1000), big.subarray(1000)]) });
    expect(ok.status, ok.body.toString()).toBe(200);
    expect(ok.json()['Size']).toBe(8 << 20);
    await call('GraphDriver.Remove', { ID: id });
  });

  it('refuses Get/Put/Remove misuse clearly', async () => {
    expect((await call('GraphDriver.Get', { ID: ID(60) })).json()['Err']).toBe(`layer ${ID(60)} does not exist`);
    expect((await call('GraphDriver.Put', { ID: ID(60) })).status).toBe(404);
    expect((await call('GraphDriver.Remove', { ID: ID(1) })).json()['Err']).toMatch(/based on it/);
    expect(
      (await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(1)}&parent=`, raw: await tarOf([{ path: 'x', content: '' }]) })).json()['Err'],
    ).toMatch(/already has content/);
    for (const m of ['Diff', 'Changes', 'DiffSize']) {
      const r = await call(`GraphDriver.${m}`, { ID: ID(2), Parent: ID(61) });
      expect(r.status, m).toBe(404);
      expect(r.json()['Err'], m).toBe(`parent layer ${ID(61)} does not exist`);
    }
    const r = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(2)}&parent=${ID(61)}`, raw: await tarOf([{ path: 'x', content: '' }]) });
    expect(r.json()['Err']).toBe(`parent layer ${ID(61)} does not exist`);
  });

  it("applies a diff against another parent than the layer's own onto its mounted view (naive, as overlay2), and puts it back", async () => {
    const merged2 = path.join(home, 'layers', ID(2), 'merged');
    // parent "": the tar is applied onto everything the layer shows; the answer is DiffSize against ""
    const r = await apply(
      ID(2),
      '',
      await tarOf([
        { path: 'x', content: 'xx' },
        { path: 'etc/.wh.motd', content: '' },
      ]),
    );
    expect(r.status, r.body.toString()).toBe(200);
    expect(mounted(merged2)).toBe(false);
    expect(r.json()['Size']).toBe((await call('GraphDriver.DiffSize', { ID: ID(2), Parent: '' })).json()['Size']);
    expect(r.json()['Size']).toBe(2 + 3); // x, etc/new; etc/motd deleted through the view
    expect(readFileSync(path.join(home, 'layers', ID(2), 'diff', 'x'), 'utf8')).toBe('xx');
    const view = (await call('GraphDriver.Get', { ID: ID(2) })).json()['Dir'] as string;
    expect(readFileSync(path.join(view, 'x'), 'utf8')).toBe('xx');
    expect(readdirSync(path.join(view, 'etc')).sort()).toEqual(['new']);
    await call('GraphDriver.Put', { ID: ID(2) });
    expect(mounted(merged2)).toBe(false);
    // the same layer through its own parent again: x and the deletion of motd are its own changes now
    const ch = (await call('GraphDriver.Changes', { ID: ID(2), Parent: ID(1) })).json()['Changes'];
    expect(ch).toEqual([
      { Path: '/etc', Kind: 0 },
      { Path: '/etc/motd', Kind: 2 },
      { Path: '/etc/new', Kind: 1 },
      { Path: '/etc/old', Kind: 2 },
      { Path: '/x', Kind: 1 },
    ]);
    // and the whole view of the container layer above it, as a tar and as changes against ""
    const all = await listTar((await call('GraphDriver.Diff', { ID: ID(3), Parent: '' })).body);
    expect(all).toMatchObject({ added: 'added!', 'etc/': 'directory', 'etc/motd': 'changed\n', x: 'xx' });
    expect(Object.keys(all).filter((n) => n.includes('.wh.') || n.includes('old') || n === 'etc/new')).toEqual([]);
    const ch3 = (await call('GraphDriver.Changes', { ID: ID(3), Parent: '' })).json()['Changes'] as { Path: string; Kind: number }[];
    expect(ch3.every((c) => c.Kind === 1)).toBe(true);
    expect(ch3.map((c) => c.Path).sort()).toEqual(
      Object.keys(all)
        .map((n) => `/${n.replace(/\/$/, '')}`)
        .sort(),
    );
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(`${home}/`))).toEqual([]);
  });

  it('keeps mounts and state across a plugin restart (no new Init), and Cleanup unmounts everything', async () => {
    const merged = (await call('GraphDriver.Get', { ID: ID(11) })).json()['Dir'] as string;
    expect(mounted(merged)).toBe(true);
    expect(await plugin.stop('SIGTERM')).toBe(0);
    expect(mounted(merged)).toBe(true); // stopping the plugin unmounts nothing
    expect(readFileSync(path.join(merged, 'data/only-in-cvmfs'), 'utf8')).toBe('cvmfs!');
    // what a Create interrupted by a crash leaves: a temporary layer directory and a dangling short link
    mkdirSync(path.join(home, 'layers', '.creating-x-1234', 'diff'), { recursive: true });
    symlinkSync('../layers/x/diff', path.join(home, 'l', 'zzzz'));
    plugin = await startPlugin(name, args());
    expect(plugin.output()).toMatch(/restored the state of the last GraphDriver.Init/);
    expect(existsSync(path.join(home, 'layers', '.creating-x-1234'))).toBe(false);
    expect(existsSync(path.join(home, 'l', 'zzzz'))).toBe(false);
    // the restored reference count: one more Get, two Puts unmount
    expect((await call('GraphDriver.Get', { ID: ID(11) })).json()['Dir']).toBe(merged);
    await call('GraphDriver.Put', { ID: ID(11) });
    expect(mounted(merged)).toBe(true);
    await call('GraphDriver.Put', { ID: ID(11) });
    expect(mounted(merged)).toBe(false);
    // killed hard with a mount: restored, then Cleanup unmounts
    await call('GraphDriver.Get', { ID: ID(3) });
    await call('GraphDriver.Get', { ID: ID(11) });
    await plugin.stop('SIGKILL');
    plugin = await startPlugin(name, args());
    expect(mounted(path.join(home, 'layers', ID(3), 'merged'))).toBe(true);
    expect((await call('GraphDriver.Cleanup', {})).status).toBe(200);
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(home))).toEqual([]);
    // data is kept
    expect(readFileSync(path.join(home, 'layers', ID(3), 'diff', 'added'), 'utf8')).toBe('added!');
  });

  it('removes everything it made: layers, links, masks', async () => {
    for (const id of [ID(11), `${ID(11)}-init`, ID(10), ID(3), `${ID(3)}-init`, ID(2), ID(1)]) {
      const r = await call('GraphDriver.Remove', { ID: id });
      expect(r.status, `${id}: ${r.body.toString()}`).toBe(200);
    }
    expect(readdirSync(path.join(home, 'layers'))).toEqual([]);
    expect(readdirSync(path.join(home, 'l'))).toEqual([]);
    expect(readdirSync(path.join(home, 'masks'))).toEqual([]);
    expect(readdirSync(outside)).toEqual(['sentinel']);
  });
});
