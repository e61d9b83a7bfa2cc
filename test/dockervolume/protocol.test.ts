/**
 * The VolumeDriver protocol over a real unix socket, without root: the real
 * mount manager on a recording host (simulated mount table), stand-in
 * repositories as directories. The calls are the ones dockerd 20.10 makes
 * (notes/volumes.md §3), plus hostile ones.
 */
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MountManager } from '../../src/core/volumes/manager.js';
import { type RunningVolumePlugin, serveVolumePlugin } from '../../src/dockervolume/server.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { pluginCall } from '../graphdriver/harness.js';

const ID = (n: number) => n.toString(16).padStart(64, 'a');

describe('VolumeDriver protocol (no root, recording host)', () => {
  const dir = tempDir('dv-proto-');
  const cvmfs = path.join(dir, 'cvmfs');
  const state = path.join(dir, 'state');
  const socket = path.join(dir, 'cvmfs.sock');
  const mounts = path.join(state, 'mounts');
  let host: RecordingHost;
  let plugin: RunningVolumePlugin;
  const call = (m: string, body?: unknown) => pluginCall(socket, m, body);
  const ok = async (m: string, body?: unknown) => {
    const r = await call(m, body);
    if (r.status !== 200) throw new Error(`${m} ${JSON.stringify(body)}: ${r.status} ${r.body.toString()}`);
    return r.json();
  };
  const ourMounts = () => host.mounts.filter((m) => m.mountPoint.startsWith(`${mounts}/`)).map((m) => m.mountPoint);

  const start = async (allow: string[] = ['*.cern.ch', 'sw.example.org']) => {
    const manager = await MountManager.open({ stateDir: state, cvmfsRoot: cvmfs, allow, backend: 'host', host, log: silentLogger(), checkIntervalMs: 0 });
    plugin = await serveVolumePlugin(manager, socket, silentLogger());
  };

  beforeAll(async () => {
    for (const r of ['cms.cern.ch', 'atlas.cern.ch', 'sw.example.org', 'evil.example.com']) mkdirSync(path.join(cvmfs, r), { recursive: true });
    host = new RecordingHost();
    await start();
  });
  afterAll(async () => {
    await plugin?.stop();
  });

  it('activates as a VolumeDriver with local scope', async () => {
    expect(await ok('Plugin.Activate')).toEqual({ Implements: ['VolumeDriver'] });
    expect(await ok('VolumeDriver.Capabilities', {})).toEqual({ Capabilities: { Scope: 'local' } });
  });

  it('Get answers only volumes that exist: a never-created name is "no such volume", so that dockerd calls Create with the options', async () => {
    const miss = await call('VolumeDriver.Get', { Name: 'cms.cern.ch' });
    expect([miss.status, miss.json()['Err']]).toEqual([404, expect.stringMatching(/^no such volume: cms\.cern\.ch \(create it: docker volume create -d/)]);
    expect((await call('VolumeDriver.Path', { Name: 'cms.cern.ch' })).json()).toEqual({ Mountpoint: '' });
    expect(await ok('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: {} })).toEqual({});
    const g = await ok('VolumeDriver.Get', { Name: 'cms.cern.ch' });
    expect(g).toEqual({
      Volume: {
        Name: 'cms.cern.ch',
        Mountpoint: '',
        CreatedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
        Status: { repository: 'cms.cern.ch', key: 'cms.cern.ch', mounted: false, holders: 0, containers: 0 },
      },
    });
    // `run --volume-driver cvmfs -v NAME:…` creates with Opts null; the name is answered exactly as asked
    await ok('VolumeDriver.Create', { Name: 'atlas.cern.ch@trunk-previous', Opts: null });
    const t = await ok('VolumeDriver.Get', { Name: 'atlas.cern.ch@trunk-previous' });
    expect((t['Volume'] as Record<string, unknown>)['Name']).toBe('atlas.cern.ch@trunk-previous');
    expect((t['Volume'] as Record<string, unknown>)['Status']).toMatchObject({ repository: 'atlas.cern.ch', tag: 'trunk-previous' });
    const again = await ok('VolumeDriver.Get', { Name: 'cms.cern.ch' });
    expect((again['Volume'] as Record<string, unknown>)['CreatedAt']).toBe((g['Volume'] as Record<string, unknown>)['CreatedAt']);
    expect(ourMounts()).toEqual([]);
  });

  it('options of a new name are applied, or refused naming the option (nothing defined)', async () => {
    const bad: [Record<string, string>, RegExp][] = [
      [{ clientConfig: 'CVMFS_CACHE_BASE=/tmp/x' }, /clientConfig line 1 "CVMFS_CACHE_BASE": may not be set per volume/],
      [{ tag: 'prod 2024' }, /tag "prod 2024": must be 1-128 characters/],
      [{ tag: 'v1', hash: 'a'.repeat(40) }, /cannot have both a tag and a root hash/],
      [{ bogus: '1' }, /option "bogus": is not known \(known: tag, hash, date, clientConfig\)/],
    ];
    for (const [opts, err] of bad) {
      const r = await call('VolumeDriver.Create', { Name: 'lhcb.cern.ch', Opts: opts });
      expect([r.status, String(r.json()['Err'])]).toEqual([400, expect.stringMatching(err)]);
      expect((await call('VolumeDriver.Get', { Name: 'lhcb.cern.ch' })).status).toBe(404);
    }
    await ok('VolumeDriver.Create', { Name: 'lhcb.cern.ch', Opts: { tag: 'prod-2024' } });
    const g = (await ok('VolumeDriver.Get', { Name: 'lhcb.cern.ch' }))['Volume'] as Record<string, unknown>;
    expect(g['Status']).toMatchObject({ repository: 'lhcb.cern.ch', tag: 'prod-2024', key: 'lhcb.cern.ch@prod-2024' });
    await ok('VolumeDriver.Remove', { Name: 'lhcb.cern.ch' });
    expect((await call('VolumeDriver.Get', { Name: 'lhcb.cern.ch' })).status).toBe(404);
  });

  it('List shows what Create accepted', async () => {
    await ok('VolumeDriver.Create', { Name: 'sw.example.org', Opts: null });
    const l = await ok('VolumeDriver.List', {});
    expect((l['Volumes'] as { Name: string }[]).map((v) => v.Name)).toEqual(['atlas.cern.ch@trunk-previous', 'cms.cern.ch', 'sw.example.org']);
  });

  it('refuses hostile and invalid names with a clear error, and mounts nothing', async () => {
    const cases: [unknown, RegExp][] = [
      ['../x', /volume name "\.\.\/x": is not a fully qualified CVMFS repository name/],
      ['a/b', /volume name "a\/b": is not a fully qualified CVMFS repository name/],
      ['CMS.cern.ch', /volume name "CMS.cern.ch": is not a fully qualified CVMFS repository name \(lower case/],
      ['', /volume name is empty: CVMFS volumes are named after their repository/],
      [undefined, /volume name is empty/],
      ['newvol', /is not a fully qualified CVMFS repository name/],
      ['f'.repeat(64), /is an anonymous volume name; CVMFS volumes are named after their repository/],
      [`${'a'.repeat(250)}.cern.ch`, /is longer than 253 characters/],
      ['x'.repeat(100_000), /is 100000 characters long \(at most 512\)/],
      ['evil.example.com', /repository "evil.example.com" is not allowed on this node \(allowed: \*\.cern\.ch, sw\.example\.org\)/],
      ['cms.cern.ch@bad tag', /tag "bad tag": must be 1-128 characters/],
      ['cms.cern.ch#zz', /root hash "zz": must be a 40-digit lower-case hex catalog hash/],
      ['cms.cern.ch@a#b', /cannot have both @tag and #hash/],
      [42, /Name must be a string/],
    ];
    for (const [name, err] of cases) {
      for (const m of ['Get', 'Create', 'Mount', 'Path']) {
        const r = await call(`VolumeDriver.${m}`, { Name: name, ID: ID(99) });
        expect([m, name, r.status]).toEqual([m, name, 400]);
        expect(String(r.json()['Err'])).toMatch(err);
      }
    }
    const l = await ok('VolumeDriver.List', {});
    expect((l['Volumes'] as { Name: string }[]).map((v) => v.Name)).toEqual(['atlas.cern.ch@trunk-previous', 'cms.cern.ch', 'sw.example.org']);
    expect(host.ops('mount')).toEqual([]);
  });

  it('refuses bad request shapes', async () => {
    expect((await call('VolumeDriver.Mount', { Name: 'cms.cern.ch' })).json()['Err']).toMatch(/mount ID "" is not valid/);
    expect((await call('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: '../../etc' })).status).toBe(400);
    expect((await call('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: ['tag'] })).json()['Err']).toBe('Opts must be an object or null');
    expect((await call('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: { tag: 1 } })).json()['Err']).toBe('Opts.tag must be a string');
    expect((await call('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: { cache: 'shared' } })).json()['Err']).toMatch(/option "cache": is not known/);
  });

  it('Mount: one backend mount per volume, a set of IDs, idempotent per ID', async () => {
    const m1 = await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(1) });
    expect(m1).toEqual({ Mountpoint: path.join(mounts, 'cms.cern.ch') });
    const bind = host.mountedAt(path.join(mounts, 'cms.cern.ch'))!;
    expect([bind.source, bind.readonly]).toEqual([path.join(cvmfs, 'cms.cern.ch'), true]);
    // the same ID again (dockerd reuses an ID after a failed Unmount), then a second container
    expect(await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(1) })).toEqual(m1);
    expect(await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(2) })).toEqual(m1);
    // trunk is the same volume: shares the mount
    expect(await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch@trunk', ID: ID(3) })).toEqual(m1);
    expect(ourMounts()).toEqual([path.join(mounts, 'cms.cern.ch')]);
    const g = (await ok('VolumeDriver.Get', { Name: 'cms.cern.ch' }))['Volume'] as Record<string, unknown>;
    expect(g['Mountpoint']).toBe(m1['Mountpoint']);
    expect(g['Status']).toEqual({ repository: 'cms.cern.ch', key: 'cms.cern.ch', mounted: true, backend: 'host', holders: 3, containers: 2 });
    expect(await ok('VolumeDriver.Path', { Name: 'cms.cern.ch' })).toEqual(m1);
    expect(await ok('VolumeDriver.Path', { Name: 'atlas.cern.ch' })).toEqual({ Mountpoint: '' });
    // an ID holding one volume cannot be reused for another
    const clash = await call('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: ID(1) });
    expect([clash.status, clash.json()['Err']]).toEqual([400, `mount ID ${ID(1)} already holds volume "cms.cern.ch", not "atlas.cern.ch"`]);
  });

  it('a repository that is not there is unavailable (503), and nothing is left mounted', async () => {
    const r = await call('VolumeDriver.Mount', { Name: 'lhcb.cern.ch', ID: ID(7) });
    expect(r.status).toBe(503);
    expect(r.json()['Err']).toMatch(/repository lhcb.cern.ch: .*lhcb.cern.ch does not exist/);
    expect(ourMounts()).toEqual([path.join(mounts, 'cms.cern.ch')]);
  });

  it('Unmount: by ID, unknown IDs succeed, the mount goes with the last ID', async () => {
    expect(await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(1) })).toEqual({});
    expect(await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(1) })).toEqual({});
    expect(await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(42) })).toEqual({});
    expect(ourMounts()).toHaveLength(1);
    const wrong = await call('VolumeDriver.Unmount', { Name: 'atlas.cern.ch', ID: ID(2) });
    expect([wrong.status, wrong.json()['Err']]).toEqual([400, `mount ID ${ID(2)} holds volume "cms.cern.ch", not "atlas.cern.ch"`]);
    await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(2) });
    expect(ourMounts()).toHaveLength(1);
    await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch@trunk', ID: ID(3) });
    expect(ourMounts()).toEqual([]);
    expect(((await ok('VolumeDriver.Get', { Name: 'cms.cern.ch' }))['Volume'] as Record<string, unknown>)['Mountpoint']).toBe('');
  });

  it('concurrent Mount/Unmount of many IDs end with exactly one or zero mounts', async () => {
    const ids = Array.from({ length: 20 }, (_, i) => ID(100 + i));
    await Promise.all(ids.map((id) => ok('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: id })));
    expect(ourMounts()).toEqual([path.join(mounts, 'atlas.cern.ch')]);
    expect(host.ops('mount').filter((c) => c.args[1] === path.join(mounts, 'atlas.cern.ch') && c.args[0] !== '')).toHaveLength(1);
    await Promise.all(
      ids.map((id, i) => (i % 2 ? ok('VolumeDriver.Unmount', { Name: 'atlas.cern.ch', ID: id }) : ok('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: id }))),
    );
    expect(ourMounts()).toEqual([path.join(mounts, 'atlas.cern.ch')]);
    await Promise.all(ids.map((id) => ok('VolumeDriver.Unmount', { Name: 'atlas.cern.ch', ID: id })));
    expect(ourMounts()).toEqual([]);
  });

  it('Create records options; the same options again are fine; other options while mounted are refused', async () => {
    await ok('VolumeDriver.Create', { Name: 'sw.example.org', Opts: { tag: 'v1' } });
    const g = (await ok('VolumeDriver.Get', { Name: 'sw.example.org' }))['Volume'] as Record<string, unknown>;
    expect(g['Status']).toMatchObject({ repository: 'sw.example.org', tag: 'v1', key: 'sw.example.org@v1' });
    await ok('VolumeDriver.Create', { Name: 'sw.example.org', Opts: { tag: 'v1' } });
    await ok('VolumeDriver.Create', { Name: 'sw.example.org', Opts: {} });
    expect(((await ok('VolumeDriver.Get', { Name: 'sw.example.org' }))['Volume'] as { Status: Record<string, unknown> }).Status['tag']).toBe('v1');
    // a tagged volume needs the client backend: the mount helper runs (recorded), then nothing is mounted there
    const r = await call('VolumeDriver.Mount', { Name: 'sw.example.org', ID: ID(8) });
    expect(r.status).toBe(503);
    expect(r.json()['Err']).toMatch(/succeeded but nothing is mounted/);
    expect(host.ops('exec').at(-1)!.args).toEqual([
      'mount',
      ['-t', 'cvmfs', '-o', `config=${path.join(state, 'client', 'sw.example.org@v1.conf')}`, 'sw.example.org', path.join(mounts, 'sw.example.org@v1')],
    ]);
    await ok('VolumeDriver.Create', { Name: 'sw.example.org', Opts: { date: '2024-05-01T00:00:00Z' } });
    expect(((await ok('VolumeDriver.Get', { Name: 'sw.example.org' }))['Volume'] as { Status: Record<string, unknown> }).Status).toMatchObject({
      date: '2024-05-01T00:00:00Z',
    });
    await ok('VolumeDriver.Remove', { Name: 'sw.example.org' });
    // redefining a volume that containers use is refused
    await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(9) });
    const busy = await call('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: { tag: 'v2' } });
    expect([busy.status, busy.json()['Err']]).toEqual([
      409,
      'volume cms.cern.ch is mounted with options {}; it cannot be redefined with {"tag":"v2"} while containers use it',
    ]);
    await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(9) });
  });

  it('Remove forgets the name (List and Get), unknown names are fine', async () => {
    await ok('VolumeDriver.Remove', { Name: 'atlas.cern.ch@trunk-previous' });
    await ok('VolumeDriver.Remove', { Name: 'never.seen.ch' });
    const l = await ok('VolumeDriver.List', {});
    expect((l['Volumes'] as { Name: string }[]).map((v) => v.Name)).toEqual(['cms.cern.ch']);
    expect((await call('VolumeDriver.Get', { Name: 'atlas.cern.ch@trunk-previous' })).status).toBe(404);
  });

  it('a plugin restart keeps holders, mounts once, and unmounts on the last Unmount', async () => {
    await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(10) });
    await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(11) });
    await plugin.stop();
    expect(ourMounts()).toEqual([path.join(mounts, 'cms.cern.ch')]); // stopping never unmounts
    await start();
    expect(await ok('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(11) })).toEqual({ Mountpoint: path.join(mounts, 'cms.cern.ch') });
    expect(ourMounts()).toEqual([path.join(mounts, 'cms.cern.ch')]);
    const names = ((await ok('VolumeDriver.List', {}))['Volumes'] as { Name: string }[]).map((v) => v.Name);
    expect(names).toContain('cms.cern.ch');
    await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(10) });
    expect(ourMounts()).toHaveLength(1);
    await ok('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(11) });
    expect(ourMounts()).toEqual([]);
  });

  it('known-volumes exist without Create (Get, List, Mount); a bad known name refuses to start; a state that refuses writes refuses Create', async () => {
    const sock2 = path.join(dir, 'known.sock');
    const m = await MountManager.open({
      stateDir: path.join(dir, 'state2'),
      cvmfsRoot: cvmfs,
      allow: ['*.cern.ch'],
      backend: 'host',
      host,
      log: silentLogger(),
      checkIntervalMs: 0,
    });
    await expect(serveVolumePlugin(m, sock2, silentLogger(), undefined, { knownVolumes: ['cms.cern.ch', 'sw.example.org'] })).rejects.toThrow(
      'known-volumes: repository "sw.example.org" is not allowed on this node (allowed: *.cern.ch)',
    );
    await expect(serveVolumePlugin(m, sock2, silentLogger(), undefined, { knownVolumes: ['../etc'] })).rejects.toThrow(
      /known-volumes: volume name "\.\.\/etc": is not a fully qualified/,
    );
    const p = await serveVolumePlugin(m, sock2, silentLogger(), undefined, { knownVolumes: ['cms.cern.ch', 'atlas.cern.ch@prod'] });
    const g = await pluginCall(sock2, 'VolumeDriver.Get', { Name: 'atlas.cern.ch@prod' });
    expect([g.status, (g.json()['Volume'] as { Status: Record<string, unknown> }).Status['tag']]).toEqual([200, 'prod']);
    expect((await pluginCall(sock2, 'VolumeDriver.Get', { Name: 'lhcb.cern.ch' })).status).toBe(404);
    expect(((await pluginCall(sock2, 'VolumeDriver.List', {})).json()['Volumes'] as { Name: string }[]).map((v) => v.Name)).toEqual([
      'atlas.cern.ch@prod',
      'cms.cern.ch',
    ]);
    await m.close(); // the state refuses writes from now on
    const c = await pluginCall(sock2, 'VolumeDriver.Create', { Name: 'lhcb.cern.ch', Opts: { tag: 'x' } });
    expect([c.status, c.json()['Err']]).toEqual([503, 'the volume manager is shutting down']);
    // the manager is closed already: stop only the HTTP side
    p.plugin.server.closeIdleConnections();
    await new Promise((r) => p.plugin.server.close(r));
    rmSync(sock2, { force: true });
  });

  it('a narrower allowlist after a restart: held volumes stay listed and can be unmounted, new mounts are refused', async () => {
    await ok('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: ID(20) });
    await plugin.stop();
    await start(['sw.example.org']);
    const l = (await ok('VolumeDriver.List', {}))['Volumes'] as { Name: string; Status: Record<string, unknown> }[];
    expect(l.find((v) => v.Name === 'atlas.cern.ch')?.Status['error']).toMatch(/not allowed on this node/);
    expect((await call('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: ID(21) })).status).toBe(400);
    // cms.cern.ch is remembered (a definition) but no longer allowed: Get refuses it too
    expect(l.find((v) => v.Name === 'cms.cern.ch')?.Status['error']).toMatch(/not allowed on this node/);
    const g = await call('VolumeDriver.Get', { Name: 'cms.cern.ch' });
    expect([g.status, g.json()['Err']]).toEqual([400, 'repository "cms.cern.ch" is not allowed on this node (allowed: sw.example.org)']);
    expect((await call('VolumeDriver.Path', { Name: 'cms.cern.ch' })).status).toBe(400);
    await ok('VolumeDriver.Unmount', { Name: 'atlas.cern.ch', ID: ID(20) });
    expect(ourMounts()).toEqual([]);
  });
});

describe('VolumeDriver over a stalled repository (no root, recording host)', () => {
  const dir = tempDir('dv-stall-');
  const cvmfs = path.join(dir, 'cvmfs');
  const socket = path.join(dir, 'stall.sock');
  const T = 400;
  const host = new RecordingHost();
  let plugin: RunningVolumePlugin;
  const call = (m: string, body?: unknown) => pluginCall(socket, m, body);

  beforeAll(async () => {
    for (const r of ['cms.cern.ch', 'atlas.cern.ch']) mkdirSync(path.join(cvmfs, r), { recursive: true });
    const manager = await MountManager.open({
      stateDir: path.join(dir, 'state'),
      cvmfsRoot: cvmfs,
      allow: ['*.cern.ch'],
      backend: 'host',
      host,
      log: silentLogger(),
      checkIntervalMs: 0,
      cvmfsTimeoutMs: T,
    });
    plugin = await serveVolumePlugin(manager, socket, silentLogger());
  });
  afterAll(async () => {
    host.unstall();
    await plugin?.stop();
  });

  it('Mount answers an Err naming the repository and the deadline within it; List, Get, Path and Unmount of another volume are answered meanwhile', async () => {
    expect((await call('VolumeDriver.Mount', { Name: 'atlas.cern.ch', ID: ID(1) })).status).toBe(200);
    expect((await call('VolumeDriver.Create', { Name: 'cms.cern.ch', Opts: null })).status).toBe(200);
    host.stalled.add(path.join(cvmfs, 'cms.cern.ch'));
    const t0 = Date.now();
    const mount = call('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(2) }).then((r) => ({ r, ms: Date.now() - t0 }));
    await new Promise((r) => setTimeout(r, 50));
    const t1 = Date.now();
    expect((await call('VolumeDriver.List', {})).status).toBe(200);
    expect((await call('VolumeDriver.Get', { Name: 'cms.cern.ch' })).status).toBe(200);
    expect((await call('VolumeDriver.Path', { Name: 'atlas.cern.ch' })).json()['Mountpoint']).toMatch(/atlas\.cern\.ch$/);
    expect((await call('VolumeDriver.Capabilities', {})).status).toBe(200);
    expect((await call('VolumeDriver.Unmount', { Name: 'atlas.cern.ch', ID: ID(1) })).status).toBe(200);
    expect(Date.now() - t1).toBeLessThan(T / 2);
    const { r, ms } = await mount;
    expect(r.status).toBe(503);
    expect(r.json()['Err']).toMatch(
      new RegExp(
        `^repository cms\\.cern\\.ch: CVMFS at ${cvmfs}/cms\\.cern\\.ch did not answer within 0\\.4 s \\(cvmfs-timeout\\): the CVMFS client is stalled`,
      ),
    );
    expect(ms).toBeGreaterThanOrEqual(T - 20);
    expect(ms).toBeLessThan(T + 300);
    // dockerd retries: at once while it stalls
    const again = await call('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(2) });
    expect(again.json()['Err']).toMatch(/has not answered for/);
    host.unstall();
    await new Promise((r2) => setTimeout(r2, 20));
    expect((await call('VolumeDriver.Mount', { Name: 'cms.cern.ch', ID: ID(2) })).json()).toEqual({
      Mountpoint: path.join(dir, 'state', 'mounts', 'cms.cern.ch'),
    });
    expect((await call('VolumeDriver.Unmount', { Name: 'cms.cern.ch', ID: ID(2) })).status).toBe(200);
  });
});
