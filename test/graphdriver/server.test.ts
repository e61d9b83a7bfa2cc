/**
 * The plugin's HTTP edge in-process, over a real unix socket, without root:
 * the calls that need no mount (Activate, Init, Create, ApplyDiff, Get of a
 * base layer, metadata, errors). Mount-based behaviour is in plugin.test.ts
 * and dockerd.test.ts (root).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import tarStream from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { type RunningGraphDriver, startGraphDriver } from '../../src/graphdriver/server.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { runCli } from '../helpers/daemon.js';
import { CLI, tempDir } from '../helpers/env.js';
import { tarOf } from '../helpers/oci-image.js';
import { pluginCall } from './harness.js';

const ID = (n: number) => n.toString(16).padStart(64, '0');

/** The entry names of a tar, in order. */
async function tarNames(buf: Buffer): Promise<string[]> {
  const names: string[] = [];
  const x = tarStream.extract();
  const done = new Promise<void>((resolve, reject) => {
    x.on('entry', (h, s, next) => {
      names.push(h.name);
      s.on('end', next);
      s.resume();
    });
    x.on('finish', resolve);
    x.on('error', reject);
  });
  x.end(buf);
  await done;
  return names;
}

describe('graph driver HTTP edge (no root)', () => {
  const dir = tempDir('gd-server-');
  const socket = path.join(dir, 'gd.sock');
  const home = path.join(dir, 'home');
  const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
  let gd: RunningGraphDriver;
  const call = (m: string, body?: unknown, o?: Parameters<typeof pluginCall>[3]) => pluginCall(socket, m, body, o);

  beforeAll(async () => {
    mkdirSync(repo, { recursive: true });
    gd = await startGraphDriver({
      socket,
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'auto',
      log: silentLogger(),
    });
  });
  afterAll(async () => {
    await gd?.stop();
  });

  it('answers Plugin.Activate (empty body) and Capabilities, before Init', async () => {
    const a = await call('Plugin.Activate');
    expect(a.status).toBe(200);
    expect(a.json()).toEqual({ Implements: ['GraphDriver'] });
    const c = await call('GraphDriver.Capabilities', {});
    expect(c.json()).toEqual({ Capabilities: { ReproducesExactDiffs: false } });
    const s = await call('GraphDriver.Status', {});
    expect(s.status).toBe(200);
    expect(JSON.stringify(s.json())).toMatch(/waiting for GraphDriver.Init/);
  });

  it('refuses layer calls before Init with a clear error', async () => {
    const r = await call('GraphDriver.Create', { ID: ID(1) });
    expect(r.status).toBe(412);
    expect(r.json()['Err']).toMatch(/not initialised: dockerd has not called GraphDriver.Init/);
    expect((await call('GraphDriver.Exists', { ID: ID(1) })).json()).toEqual({ Exists: false });
  });

  it('refuses an Init with unknown storage options, naming them', async () => {
    const r = await call('GraphDriver.Init', { Home: home, Opts: ['cvmfs.nosuch=1'], UIDMaps: null, GIDMaps: null });
    expect(r.status).toBe(400);
    expect(r.json()['Err']).toMatch(/storage option "cvmfs.nosuch=1": unknown option \(known: repository, absolute-mountpoint/);
    expect(existsSync(home)).toBe(false);
  });

  it('initialises as dockerd does and remembers the Init', async () => {
    const r = await call('GraphDriver.Init', { Home: home, Opts: null, UIDMaps: null, GIDMaps: null });
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({});
    const saved = JSON.parse(readFileSync(path.join(dir, 'state', 'driver.json'), 'utf8')) as Record<string, unknown>;
    expect(saved['home']).toBe(home);
    const s = (await call('GraphDriver.Status', {})).json()['Status'] as [string, string][];
    expect(s).toContainEqual(['Home', home]);
    expect(s).toContainEqual(['CVMFS Mountpoint', repo]);
  });

  it('creates a base layer, applies a tar, and Gets its diff dir without a mount', async () => {
    expect((await call('GraphDriver.Create', { ID: ID(2) })).status).toBe(200);
    expect((await call('GraphDriver.Exists', { ID: ID(2) })).json()).toEqual({ Exists: true });
    const tar = await tarOf([
      { path: 'etc/', type: 'dir' },
      { path: 'etc/motd', content: 'hello\n' },
      { path: 'etc/.wh.gone', content: '' },
    ]);
    const ad = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(2)}&parent=`, raw: tar, chunked: true });
    expect(ad.status).toBe(200);
    expect(ad.json()).toEqual({ Size: 6 });
    const g = await call('GraphDriver.Get', { ID: ID(2) });
    expect(g.json()).toEqual({ Dir: path.join(home, 'layers', ID(2), 'diff') });
    expect(readFileSync(path.join(home, 'layers', ID(2), 'diff', 'etc', 'motd'), 'utf8')).toBe('hello\n');
    expect((await call('GraphDriver.Put', { ID: ID(2) })).status).toBe(200);
    expect((await call('GraphDriver.DiffSize', { ID: ID(2) })).json()).toEqual({ Size: 6 });
    const md = (await call('GraphDriver.GetMetadata', { ID: ID(2) })).json()['Metadata'] as Record<string, string>;
    expect(md['UpperDir']).toBe(path.join(home, 'layers', ID(2), 'diff'));
    expect(md['LowerDir']).toBeUndefined();
  });

  it('recognises a thin image at ApplyDiff and reports it in the metadata', async () => {
    const l1 = addLayer(repo, 'base', { 'bin/tool': 'x' });
    const l2 = addLayer(repo, 'top', { 'data/file': 'y' });
    await call('GraphDriver.Create', { ID: ID(3) });
    const tar = await tarOf([{ path: 'thin.json', content: thinJson('unpacked.cern.ch', [l1, l2]) }]);
    const ad = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(3)}&parent=`, raw: tar });
    expect(ad.status, ad.body.toString()).toBe(200);
    const md = (await call('GraphDriver.GetMetadata', { ID: ID(3) })).json()['Metadata'] as Record<string, string>;
    expect(md['CvmfsThinImage']).toBe('true');
    expect(md['CvmfsLayers']).toBe('2');
    expect(md['CvmfsLowerDir']).toBe(`${l2.dir}:${l1.dir}`);
    // the thin layer itself: its diff dir with thin.json (what docker save reads)
    const g = (await call('GraphDriver.Get', { ID: ID(3) })).json()['Dir'] as string;
    expect(readdirSync(g)).toEqual(['thin.json']);
    // a child lists the CVMFS directories as its lowers, not the thin layer's diff
    await call('GraphDriver.CreateReadWrite', { ID: `${ID(4)}-init`, Parent: ID(3) });
    const cmd = (await call('GraphDriver.GetMetadata', { ID: `${ID(4)}-init` })).json()['Metadata'] as Record<string, string>;
    expect(cmd['LowerDir']).toBe(`${l2.dir}:${l1.dir}`);
    expect(readdirSync(path.join(home, 'l')).length).toBeGreaterThanOrEqual(5);
  });

  it('refuses a bad thin manifest with the field name, and leaves the layer empty', async () => {
    await call('GraphDriver.Create', { ID: ID(5) });
    const bad = JSON.stringify({
      version: '1.0',
      layers: [{ digest: 'c'.repeat(64), url: 'cvmfs://evil.example.org/.layers/cc/' + 'c'.repeat(64) + '/layerfs' }],
    });
    const r = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(5)}&parent=`, raw: await tarOf([{ path: 'thin.json', content: bad }]) });
    expect(r.status).toBe(400);
    expect(r.json()['Err']).toMatch(/thin image manifest: layers\[0\]\.url: repository "evil.example.org" is not allowed/);
    expect(readdirSync(path.join(home, 'layers', ID(5), 'diff'))).toEqual([]);
    // the same layer can take a good tar afterwards
    const ok = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(5)}&parent=`, raw: await tarOf([{ path: 'f', content: 'ok' }]) });
    expect(ok.status).toBe(200);
  });

  it('answers unknown layers, bad IDs, bad bodies and unknown methods with clear errors', async () => {
    for (const m of ['GraphDriver.Get', 'GraphDriver.Put', 'GraphDriver.GetMetadata', 'GraphDriver.Changes', 'GraphDriver.DiffSize', 'GraphDriver.Diff']) {
      const r = await call(m, { ID: ID(99) });
      expect(r.status, m).toBe(404);
      expect(r.json()['Err'], m).toBe(`layer ${ID(99)} does not exist`);
    }
    const ad = await call('GraphDriver.ApplyDiff', undefined, { query: `id=${ID(99)}&parent=`, raw: await tarOf([{ path: 'f', content: 'x' }]) });
    expect(ad.status).toBe(404);
    expect((await call('GraphDriver.Create', { ID: ID(6), Parent: ID(98) })).json()['Err']).toBe(`parent layer ${ID(98)} does not exist`);
    expect((await call('GraphDriver.Get', { ID: '../../etc' })).status).toBe(400);
    expect((await call('GraphDriver.Get', {})).json()['Err']).toMatch(/ID "" is not a valid layer ID/);
    const notJson = await call('GraphDriver.Get', undefined, { raw: Buffer.from('{"ID":') });
    expect(notJson.status).toBe(400);
    expect(notJson.json()['Err']).toMatch(/not valid JSON/);
    const big = await call('GraphDriver.Get', undefined, { raw: Buffer.alloc(2 << 20, 0x20) });
    expect(big.status).toBe(400);
    expect(big.json()['Err']).toMatch(/larger than/);
    const unknown = await call('GraphDriver.Frobnicate', {});
    expect(unknown.status).toBe(404);
    expect(unknown.json()['Err']).toMatch(/unknown plugin method "GraphDriver.Frobnicate"/);
    expect((await call('GraphDriver.Create', { ID: ID(7), StorageOpt: { size: '1G' } })).json()['Err']).toMatch(/"size" not supported/);
    expect((await call('GraphDriver.Create', { ID: ID(2) })).status).toBe(200); // same again: idempotent
    expect((await call('GraphDriver.CreateReadWrite', { ID: ID(2) })).status).toBe(409);
  });

  it("answers Diff, Changes and DiffSize against another parent than the layer's own (naive, views unmounted here)", async () => {
    // two base layers: their views are their diff dirs; ID(2) against the thin layer ID(3) holding thin.json
    const d = await call('GraphDriver.Diff', { ID: ID(2), Parent: ID(3) });
    expect(d.status, d.body.toString()).toBe(200);
    const names = await tarNames(d.body);
    expect(names).toContain('etc/motd');
    expect(names).toContain('.wh.thin.json');
    expect(names.filter((n) => n.startsWith('etc/.wh.'))).toEqual([]);
    const ch = (await call('GraphDriver.Changes', { ID: ID(2), Parent: ID(3) })).json()['Changes'] as { Path: string; Kind: number }[];
    expect(ch).toContainEqual({ Path: '/etc/motd', Kind: 1 });
    expect(ch).toContainEqual({ Path: '/thin.json', Kind: 2 });
    expect((await call('GraphDriver.DiffSize', { ID: ID(2), Parent: ID(3) })).json()).toEqual({ Size: 6 });
    // the other way round: thin.json added, etc (a whole directory) deleted
    const other = await call('GraphDriver.Diff', { ID: ID(3), Parent: ID(2) });
    expect(await tarNames(other.body)).toEqual(['.wh.etc', 'thin.json']);
  });

  it('removes layers (children first), idempotently, and leaves nothing behind', async () => {
    const r = await call('GraphDriver.Remove', { ID: ID(3) });
    expect(r.status).toBe(412);
    expect(r.json()['Err']).toMatch(/1 layer\(s\) are based on it/);
    for (const id of [`${ID(4)}-init`, ID(3), ID(2), ID(5)]) expect((await call('GraphDriver.Remove', { ID: id })).status).toBe(200);
    expect((await call('GraphDriver.Remove', { ID: ID(3) })).status).toBe(200);
    expect(readdirSync(path.join(home, 'layers'))).toEqual([]);
    expect(readdirSync(path.join(home, 'l'))).toEqual([]);
    expect((await call('GraphDriver.Cleanup', {})).status).toBe(200);
  });

  it('restores the last Init when the plugin restarts (dockerd sends no new Init)', async () => {
    await call('GraphDriver.Create', { ID: ID(8) });
    await gd.stop();
    writeFileSync(path.join(dir, 'marker'), '');
    gd = await startGraphDriver({
      socket,
      stateDir: path.join(dir, 'state'),
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'auto',
      log: silentLogger(),
    });
    expect((await call('GraphDriver.Exists', { ID: ID(8) })).json()).toEqual({ Exists: true });
    expect((await call('GraphDriver.Get', { ID: ID(8) })).json()['Dir']).toBe(path.join(home, 'layers', ID(8), 'diff'));
    expect((await call('GraphDriver.Remove', { ID: ID(8) })).status).toBe(200);
  });
});

describe('cvmfs-thin graphdriver CLI (no root)', () => {
  const dir = tempDir('gd-cli-');

  it('refuses a config file with unknown keys, naming them', async () => {
    const cfg = path.join(dir, 'bad.toml');
    writeFileSync(cfg, 'repository = "unpacked.cern.ch"\nnosuch = 1\n');
    const r = await runCli(['graphdriver', '--config', cfg, '--socket', path.join(dir, 'x.sock')]);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/unknown key\(s\) "nosuch"/);
  });

  it('serves on the socket from the config file (flags win), and stops cleanly on SIGTERM', async () => {
    const cfg = path.join(dir, 'good.toml');
    const socket = path.join(dir, 'cli.sock');
    writeFileSync(
      cfg,
      `socket = "${path.join(dir, 'unused.sock')}"\nstate-dir = "${path.join(dir, 'state')}"\nrepository = "sft.cern.ch"\nidmapped-layers = "off"\nlog-level = "info"\n`,
    );
    const proc = spawn(process.execPath, [CLI, 'graphdriver', '--config', cfg, '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
    for (let i = 0; i < 400 && !out.includes('graph driver plugin serving'); i++) await new Promise((r) => setTimeout(r, 25));
    expect(out).toContain('"repository":"sft.cern.ch"');
    expect(out).toContain('"mountpoint":"/cvmfs/sft.cern.ch"');
    const a = await pluginCall(socket, 'Plugin.Activate');
    expect(a.json()).toEqual({ Implements: ['GraphDriver'] });
    expect(existsSync(path.join(dir, 'unused.sock'))).toBe(false);
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(existsSync(socket)).toBe(false);
  });
});
