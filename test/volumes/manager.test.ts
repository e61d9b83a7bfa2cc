/**
 * The repository mount manager's semantics, unprivileged: a RecordingHost
 * stands in for mount(2) and the mount table; state and directories are real.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MountManager } from '../../src/core/volumes/manager.js';
import type { MountManagerOptions } from '../../src/core/volumes/types.js';
import { MS_BIND, MS_REC, MS_SHARED, MS_SLAVE } from '../../src/core/host/sys.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('cvmfs-thin-vol-');
let n = 0;
const open: MountManager[] = [];

function setup(over: Partial<MountManagerOptions> = {}) {
  const dir = path.join(base, `t${n++}`);
  const cvmfsRoot = path.join(dir, 'cvmfs');
  for (const r of ['cms.cern.ch', 'atlas.cern.ch', 'sft.cern.ch', 'lhcb.example.org']) {
    mkdirSync(path.join(cvmfsRoot, r), { recursive: true });
    writeFileSync(path.join(cvmfsRoot, r, 'README'), r);
  }
  const host = new RecordingHost();
  hosts.push(host);
  const opts: MountManagerOptions = {
    stateDir: path.join(dir, 'state'),
    cvmfsRoot,
    allow: ['*.cern.ch'],
    backend: 'host',
    checkIntervalMs: 0,
    host,
    log: silentLogger(),
    ...over,
  };
  const start = async () => {
    const m = await MountManager.open({ ...opts, host: opts.host });
    open.push(m);
    return m;
  };
  return { dir, cvmfsRoot, host: opts.host as RecordingHost, opts, start };
}

const hosts: RecordingHost[] = [];

afterEach(async () => {
  // stalled probes answer (and end) before the managers close
  for (const h of hosts.splice(0)) h.unstall();
  for (const m of open.splice(0)) await m.close().catch(() => undefined);
});

const binds = (h: RecordingHost) => h.ops('mount').filter((c) => ((c.args[3] as number) & MS_BIND) !== 0 && c.args[0] !== '');

describe('names and the allowlist', () => {
  it.each([
    ['../x', /not a fully qualified/],
    ['a/b.cern.ch', /not a fully qualified/],
    ['CMS.cern.ch', /not a fully qualified/],
    ['cms', /not a fully qualified/],
    ['', /is empty/],
    ['a'.repeat(64).replace(/a/g, 'f'), /anonymous volume/],
    [`${'a'.repeat(250)}.cern.ch`, /longer than 253/],
    ['cms.cern.ch@', /tag/],
    ['cms.cern.ch@../../x', /tag/],
    ['cms.cern.ch#nothex', /root hash/],
    ['cms.cern.ch@t#abc', /both/],
    ['evil.example.com', /not allowed on this node \(allowed: \*\.cern\.ch\)/],
  ])('refuses %j', async (name, re) => {
    const { start } = setup();
    const m = await start();
    expect(() => m.parse(name)).toThrow(re);
  });

  it('accepts CERN forms and options; trunk is the plain repository', async () => {
    const { start } = setup();
    const m = await start();
    expect(m.parse('cms.cern.ch')).toEqual({ repository: 'cms.cern.ch' });
    expect(m.parse('cms.cern.ch@trunk')).toEqual({ repository: 'cms.cern.ch' });
    expect(m.parse('cms.cern.ch@prod-2024')).toEqual({ repository: 'cms.cern.ch', tag: 'prod-2024' });
    expect(m.parse('cms.cern.ch', { date: '2024-05-01T00:00:00Z' }).date).toBe('2024-05-01T00:00:00Z');
    expect(() => m.parse('cms.cern.ch', { color: 'blue' })).toThrow(/option "color".*not known/);
    expect(() => m.parse('cms.cern.ch', { clientConfig: 'CVMFS_CACHE_BASE=/etc' })).toThrow(/CVMFS_CACHE_BASE.*may not be set per volume/);
    expect(() => m.parse('cms.cern.ch', { clientConfig: 'CVMFS_HTTP_PROXY=$(reboot)' })).toThrow(/shell or control/);
    expect(m.specFrom(undefined)).toEqual({ repository: null });
    expect(() => m.specFrom(undefined, { tag: 'x' })).toThrow(/need a repository/);
  });
});

describe('holders', () => {
  it('mounts once for a set of holders, idempotent per id, unmounts after the last', async () => {
    const { start, host, opts } = setup();
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const a = await m.acquire(spec, { id: 'docker:a' });
    expect(a.path).toBe(path.join(opts.stateDir, 'mounts', 'cms.cern.ch'));
    await m.acquire(spec, { id: 'docker:a' });
    await m.acquire(spec, { id: 'docker:b' });
    expect(binds(host)).toHaveLength(1);
    expect(host.mountedAt(a.path)?.readonly).toBe(true);
    expect(m.get('cms.cern.ch')?.holders.map((h) => h.id)).toEqual(['docker:a', 'docker:b']);
    expect(await m.release('docker:a')).toBe(true);
    expect(await m.release('docker:a')).toBe(false);
    expect(host.mountedAt(a.path)).toBeDefined();
    expect(await m.release('docker:b')).toBe(true);
    expect(host.mountedAt(a.path)).toBeUndefined();
    expect(existsSync(a.path)).toBe(false);
    expect(m.list()).toEqual([]);
  });

  it('50 concurrent holders of one repository: all succeed, one backend mount', async () => {
    const { start, host } = setup();
    const m = await start();
    const spec = m.parse('atlas.cern.ch');
    const r = await Promise.all(Array.from({ length: 50 }, (_, i) => m.acquire(spec, { id: `h${i}` })));
    expect(new Set(r.map((x) => x.path)).size).toBe(1);
    expect(binds(host)).toHaveLength(1);
    expect(m.get('atlas.cern.ch')?.holders).toHaveLength(50);
  });

  it('a missing repository is unavailable, names the path, and mounts nothing', async () => {
    const { start, host, cvmfsRoot } = setup();
    const m = await start();
    await expect(m.acquire(m.parse('nope.cern.ch'), { id: 'x' })).rejects.toThrow(`${cvmfsRoot}/nope.cern.ch does not exist`);
    expect(host.mounts).toHaveLength(0);
    expect(m.list()).toEqual([]);
  });

  it('a repository broken on the host is reported as such, never unmounted by us', async () => {
    const { start, host, cvmfsRoot } = setup();
    host.broken.add(path.join(cvmfsRoot, 'sft.cern.ch'));
    const m = await start();
    await expect(m.acquire(m.parse('sft.cern.ch'), { id: 'x' })).rejects.toThrow(/broken on the host/);
    expect(host.ops('umount')).toHaveLength(0);
  });

  it('unmounts after the idle delay, and a new holder in the meantime keeps it', async () => {
    const { start, host } = setup({ idleUnmountMs: 150 });
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const s = await m.acquire(spec, { id: 'a' });
    await m.release('a');
    expect(host.mountedAt(s.path)).toBeDefined();
    await m.acquire(spec, { id: 'b' });
    await new Promise((r) => setTimeout(r, 300));
    expect(host.mountedAt(s.path)).toBeDefined();
    expect(binds(host)).toHaveLength(1);
    await m.release('b');
    for (let i = 0; i < 100 && host.mountedAt(s.path); i++) await new Promise((r) => setTimeout(r, 20));
    expect(host.mountedAt(s.path)).toBeUndefined();
  });
});

describe('restart and recovery', () => {
  it('holders survive a restart; mounts are reused, not doubled', async () => {
    const { start, host } = setup();
    const m1 = await start();
    const s = await m1.acquire(m1.parse('cms.cern.ch'), { id: 'docker:1' });
    await m1.close();
    expect(host.mountedAt(s.path)).toBeDefined();
    const m2 = await start();
    expect(m2.get('cms.cern.ch')?.holders.map((h) => h.id)).toEqual(['docker:1']);
    await m2.acquire(m2.parse('cms.cern.ch'), { id: 'docker:2' });
    expect(binds(host)).toHaveLength(1);
    await m2.release('docker:1');
    await m2.release('docker:2');
    expect(host.mountedAt(s.path)).toBeUndefined();
  });

  it('orphan and stacked mounts of ours are cleaned up at start; foreign mounts are left alone', async () => {
    const { start, host, opts, cvmfsRoot, dir } = setup();
    const m1 = await start();
    const s = await m1.acquire(m1.parse('cms.cern.ch'), { id: 'h' });
    await m1.close();
    const orphan = path.join(opts.stateDir, 'mounts', 'atlas.cern.ch');
    mkdirSync(orphan, { recursive: true });
    host.bind(path.join(cvmfsRoot, 'atlas.cern.ch'), orphan, { readonly: true });
    host.bind(path.join(cvmfsRoot, 'cms.cern.ch'), s.path, { readonly: true }); // a double mount
    const foreign = path.join(dir, 'somewhere-else');
    mkdirSync(foreign);
    host.bind(cvmfsRoot, foreign);
    await start();
    expect(host.mountedAt(orphan)).toBeUndefined();
    expect(existsSync(orphan)).toBe(false);
    expect(host.mounts.filter((x) => x.mountPoint === s.path)).toHaveLength(1);
    expect(host.mountedAt(foreign)).toBeDefined();
  });

  it('a broken (ENOTCONN) mount is detected and mounted again, with its targets', async () => {
    const { start, host, dir } = setup();
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const target = path.join(dir, 'pod', 'vol');
    const s = await m.publish(spec, target);
    host.broken.add(s.path);
    host.broken.add(target);
    const before = binds(host).length;
    // the repair happens in the health check and before handing the volume out again
    host.broken.clear();
    host.broken.add(s.path);
    host.broken.add(target);
    const repairedTargets = new Set<string>();
    host.execHandler = () => ({ code: 0, stdout: '', stderr: '' });
    const origBind = host.bind.bind(host);
    host.bind = (src, t, o) => {
      host.broken.delete(t);
      repairedTargets.add(t);
      origBind(src, t, o);
    };
    expect(await m.check()).toEqual(['cms.cern.ch']);
    expect(repairedTargets).toEqual(new Set([s.path, target]));
    expect(binds(host).length).toBe(before + 2);
    expect(host.mounts.filter((x) => x.mountPoint === s.path)).toHaveLength(1);
    expect(await m.check()).toEqual([]);
  });
});

/** The error a promise fails with and how long it took; throws if it succeeds. */
async function failure(p: Promise<unknown>): Promise<{ error: Error & { code?: string; kind?: string }; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (error) {
    return { error: error as Error, ms: Date.now() - t0 };
  }
  throw new Error('expected a failure');
}

describe('a stalled repository (no answer: every request that needs it fails within cvmfs-timeout)', () => {
  const T = 300;

  it('acquire and publish of a repository not mounted yet fail within the deadline, naming it; others are answered meanwhile; it works once it answers', async () => {
    const { start, host, cvmfsRoot, dir } = setup({ cvmfsTimeoutMs: T });
    const m = await start();
    const other = await m.acquire(m.parse('atlas.cern.ch'), { id: 'other' });
    const src = path.join(cvmfsRoot, 'cms.cern.ch');
    host.stalled.add(src);
    const pending = [failure(m.acquire(m.parse('cms.cern.ch'), { id: 'docker:1' })), failure(m.publish(m.parse('cms.cern.ch'), path.join(dir, 'pod', 'vol')))];
    // meanwhile: other volumes, list, get, release
    const t1 = Date.now();
    await m.acquire(m.parse('atlas.cern.ch'), { id: 'other2' });
    expect(m.list().map((v) => v.key)).toEqual(['atlas.cern.ch']);
    expect(m.get('atlas.cern.ch')?.holders).toHaveLength(2);
    expect(await m.release('other2')).toBe(true);
    expect(Date.now() - t1).toBeLessThan(T / 2);
    for (const f of await Promise.all(pending)) {
      expect(f.error).toMatchObject({ code: 'CVMFS_THIN_CVMFS_STALLED', kind: 'unavailable' });
      expect(f.error.message).toMatch(
        /^repository cms\.cern\.ch: CVMFS at .*\/cms\.cern\.ch (did not answer within 0\.3 s|has not answered for [\d.]+ s \(deadline 0\.3 s)/,
      );
      expect(f.ms).toBeLessThan(T + 250);
    }
    // known to stall: the next request fails at once
    const fast = await failure(m.acquire(m.parse('cms.cern.ch'), { id: 'docker:2' }));
    expect(fast.error.message).toMatch(/has not answered for [\d.]+ s \(deadline 0\.3 s, cvmfs-timeout\)/);
    expect(fast.ms).toBeLessThan(100);
    expect(m.get('cms.cern.ch')).toBeUndefined();
    expect(host.mountedAt(path.join(path.dirname(other.path), 'cms.cern.ch'))).toBeUndefined();
    expect(host.ops('probeFs').filter((c) => (c.args as string[]).includes(`statfs ${src}`))).toHaveLength(1);

    // the late answer ends the stall
    host.unstall();
    await new Promise((r) => setTimeout(r, 20));
    const s = await m.acquire(m.parse('cms.cern.ch'), { id: 'docker:1' });
    expect(host.mountedAt(s.path)?.readonly).toBe(true);
  });

  it('a mounted volume whose client stalls: acquire fails within the deadline and adds no holder; release and unpublish still work; the check leaves it alone', async () => {
    const { start, host, dir } = setup({ cvmfsTimeoutMs: T });
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const target = path.join(dir, 'pod', 'vol');
    const s = await m.publish(spec, target);
    await m.acquire(spec, { id: 'a' });
    host.stalled.add(s.path);
    host.stalled.add(target);
    const f = await failure(m.acquire(spec, { id: 'b' }));
    expect(f.error).toMatchObject({ code: 'CVMFS_THIN_CVMFS_STALLED' });
    expect(f.error.message).toContain(`repository cms.cern.ch: CVMFS at ${s.path} did not answer within 0.3 s (cvmfs-timeout)`);
    expect(f.ms).toBeGreaterThanOrEqual(T - 20);
    expect(f.ms).toBeLessThan(T + 250);
    expect(m.get('cms.cern.ch')?.holders.map((h) => h.id)).toEqual([target, 'a']);
    // a stalled mount is not broken: nothing is unmounted or repaired
    const umounts = host.ops('umount').length;
    const t0 = Date.now();
    expect(await m.check()).toEqual([]);
    expect(Date.now() - t0).toBeLessThan(T + 250);
    expect(host.ops('umount')).toHaveLength(umounts);
    expect(await m.pathHealth(target)).toBe('stalled');
    // going away needs no answer from CVMFS
    expect(await m.release('a')).toBe(true);
    expect(await m.unpublish(target)).toBe(true);
    expect(host.mountedAt(target)).toBeUndefined();
    expect(host.mountedAt(s.path)).toBeUndefined();
  });

  it('a dead (ENOTCONN) client is not a stall: the check mounts it again, with its targets, also those bound from a staging path', async () => {
    const { start, host, dir } = setup({ cvmfsTimeoutMs: T });
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const staging = path.join(dir, 'globalmount');
    const target = path.join(dir, 'pod', 'mount');
    const s = await m.publish(spec, staging);
    await m.publish(spec, target, { source: staging });
    for (const p of [s.path, staging, target]) host.broken.add(p);
    const origBind = host.bind.bind(host);
    const rebound: string[] = [];
    host.bind = (src, t, o) => {
      host.broken.delete(t);
      rebound.push(t);
      origBind(src, t, o);
    };
    const t0 = Date.now();
    expect(await m.check()).toEqual(['cms.cern.ch']);
    expect(Date.now() - t0).toBeLessThan(T);
    expect(rebound).toEqual([s.path, staging, target]);
    expect(host.mountedAt(target)?.from).toBe(staging);
    for (const p of [s.path, staging, target]) expect(host.mounts.filter((x) => x.mountPoint === p)).toHaveLength(1);
    expect(await m.check()).toEqual([]);
  });

  it('a mount repaired by a request has its targets bound again too', async () => {
    const { start, host, dir } = setup({ cvmfsTimeoutMs: T });
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const target = path.join(dir, 'pod', 'vol');
    const s = await m.publish(spec, target);
    host.broken.add(s.path);
    host.broken.add(target);
    const origBind = host.bind.bind(host);
    host.bind = (src, t, o) => {
      host.broken.delete(t);
      origBind(src, t, o);
    };
    await m.acquire(spec, { id: 'docker:x' });
    expect(host.broken.size).toBe(0);
    expect(await m.pathHealth(target)).toBe('ok');
  });

  it("the host's repository still dead: our mount is kept (and found again by the next check) until it can be bound again", async () => {
    const { start, host, cvmfsRoot } = setup({ cvmfsTimeoutMs: T });
    const m = await start();
    const s = await m.acquire(m.parse('cms.cern.ch'), { id: 'a' });
    const src = path.join(cvmfsRoot, 'cms.cern.ch');
    host.broken.add(src);
    host.broken.add(s.path);
    expect(await m.check()).toEqual([]);
    expect(host.mountedAt(s.path)).toBeDefined();
    expect(host.ops('umount')).toHaveLength(0);
    await expect(m.acquire(m.parse('cms.cern.ch'), { id: 'b' })).rejects.toThrow(/broken on the host/);
    // the host mounts a new client
    host.broken.delete(src);
    const origBind = host.bind.bind(host);
    host.bind = (from, t, o) => {
      host.broken.delete(t);
      origBind(from, t, o);
    };
    expect(await m.check()).toEqual(['cms.cern.ch']);
    expect(host.mounts.filter((x) => x.mountPoint === s.path)).toHaveLength(1);
    expect(await m.pathHealth(s.path)).toBe('ok');
  });

  it('under autofs, the first access of a repository (the automount) gets mount-timeout; a repository already mounted gets cvmfs-timeout', async () => {
    const { start, host, cvmfsRoot } = setup({ cvmfsTimeoutMs: 200, mountTimeoutMs: 700 });
    host.mount('auto.cvmfs', cvmfsRoot, 'autofs', 0, null);
    const m = await start();
    const cms = path.join(cvmfsRoot, 'cms.cern.ch');
    host.stalled.add(cms);
    const f = await failure(m.acquire(m.parse('cms.cern.ch'), { id: 'a' }));
    expect(f.error).toMatchObject({ code: 'CVMFS_THIN_CVMFS_STALLED' });
    expect(f.error.message).toBe(`repository cms.cern.ch: ${cms} was not mounted by autofs within 0.7 s (mount-timeout): CVMFS automount or network stuck?`);
    expect(f.ms).toBeGreaterThanOrEqual(680);
    expect(f.ms).toBeLessThan(1000);
    // mounted by autofs meanwhile, then stalled: the CVMFS deadline
    host.unstall();
    const atlas = path.join(cvmfsRoot, 'atlas.cern.ch');
    host.mount('cvmfs2', atlas, 'fuse', 0, null);
    host.stalled.add(atlas);
    const g = await failure(m.acquire(m.parse('atlas.cern.ch'), { id: 'b' }));
    expect(g.error.message).toBe(
      `repository atlas.cern.ch: CVMFS at ${atlas} did not answer within 0.2 s (cvmfs-timeout): the CVMFS client is stalled (server or proxy unreachable?)`,
    );
    expect(g.ms).toBeLessThan(500);
    host.unstall();
    await new Promise((r) => setTimeout(r, 20));
    expect((await m.acquire(m.parse('cms.cern.ch'), { id: 'a' })).backend).toBe('host');
  });

  it('at start, a stalled mount costs one deadline however many volumes it has, and is left mounted', async () => {
    const { start, host, cvmfsRoot } = setup({ cvmfsTimeoutMs: T });
    const m1 = await start();
    const paths = [];
    for (const r of ['cms.cern.ch', 'atlas.cern.ch', 'sft.cern.ch']) paths.push((await m1.acquire(m1.parse(r), { id: r })).path);
    await m1.close();
    for (const p of paths) host.stalled.add(p);
    const before = host.ops('probeFs').length;
    const t0 = Date.now();
    const m2 = await start();
    // asked in the probe (all at once), waited for one deadline
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(T - 20);
    expect(took).toBeLessThan(2 * T);
    expect(
      host
        .ops('probeFs')
        .slice(before)
        .flatMap((c) => c.args as string[])
        .sort(),
    ).toEqual(paths.map((p) => `statfs ${p}`).sort());
    expect(m2.list().filter((v) => v.mounted)).toHaveLength(3);
    expect(host.ops('umount')).toHaveLength(0);
    expect(host.stalled.has(path.join(cvmfsRoot, 'cms.cern.ch'))).toBe(false);
  });
});

describe('publish (CSI and FlexVolume targets)', () => {
  it('binds read-only, is idempotent, refuses other arguments on the same target, and undoes exactly what it did', async () => {
    const { start, host, dir } = setup();
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const target = path.join(dir, 'pods', 'uid', 'volumes', 'mount');
    await m.publish(spec, target, { meta: { volumeId: 'v1' } });
    expect(host.mountedAt(target)?.readonly).toBe(true);
    await m.publish(spec, target, { meta: { volumeId: 'v1' } });
    expect(host.mounts.filter((x) => x.mountPoint === target)).toHaveLength(1);
    await expect(m.publish(spec, target, { meta: { volumeId: 'v2' } })).rejects.toMatchObject({ kind: 'already-exists' });
    await expect(m.publish(m.parse('atlas.cern.ch'), target)).rejects.toMatchObject({ kind: 'already-exists' });
    expect(await m.unpublish(target)).toBe(true);
    expect(host.mountedAt(target)).toBeUndefined();
    expect(existsSync(target)).toBe(false);
    expect(await m.unpublish(target)).toBe(false);
    expect(host.mounts).toHaveLength(0);
  });

  it('keeps a target directory it did not create; refuses a file, a relative path and a foreign mount point', async () => {
    const { start, host, dir, cvmfsRoot } = setup();
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const t = path.join(dir, 'existing');
    mkdirSync(t);
    await m.publish(spec, t);
    await m.unpublish(t);
    expect(existsSync(t)).toBe(true);
    const f = path.join(dir, 'file');
    writeFileSync(f, 'x');
    await expect(m.publish(spec, f)).rejects.toThrow(/not a directory/);
    await expect(m.publish(spec, 'relative/dir')).rejects.toThrow(/must be absolute/);
    const foreign = path.join(dir, 'foreign');
    mkdirSync(foreign);
    host.bind(cvmfsRoot, foreign);
    await expect(m.publish(spec, foreign)).rejects.toThrow(/already a mount point/);
    expect(await m.unpublish(foreign)).toBe(false);
    expect(host.mountedAt(foreign)).toBeDefined();
    expect(m.list()).toEqual([]);
  });

  it('the whole tree is an rbind of the CVMFS root with slave propagation, no backend mount', async () => {
    const { start, host, dir, cvmfsRoot } = setup();
    // systemd's /cvmfs automount, shared: a slave of it receives the repositories mounted later
    host.mount('systemd-1', cvmfsRoot, 'autofs', 0, null);
    host.mount('', cvmfsRoot, null, MS_SHARED, null);
    const ours = host.ops('mount').length;
    const m = await start();
    const t = path.join(dir, 'all');
    const s = await m.publish(m.specFrom(undefined), t);
    expect(s.path).toBe(cvmfsRoot);
    const calls = host
      .ops('mount')
      .slice(ours)
      .map((c) => c.args[3] as number);
    expect(calls[0]! & (MS_BIND | MS_REC)).toBe(MS_BIND | MS_REC);
    expect(calls.some((f) => (f & MS_SLAVE) !== 0)).toBe(true);
    expect(host.mountedAt(t)?.propagation).toBe('slave');
  });

  it('publish from a staging path requires it to be staged', async () => {
    const { start, dir } = setup();
    const m = await start();
    const spec = m.parse('cms.cern.ch');
    const staging = path.join(dir, 'globalmount');
    await expect(m.publish(spec, path.join(dir, 't1'), { source: staging })).rejects.toMatchObject({ kind: 'failed-precondition' });
    await m.publish(spec, staging);
    await m.publish(spec, path.join(dir, 't1'), { source: staging });
    expect(m.get('cms.cern.ch')?.holders).toHaveLength(2);
  });
});

describe('client backend', () => {
  it('runs the mount helper with a per-volume config file, and reports its failure', async () => {
    const { start, host, opts } = setup({ backend: 'client', mountCommand: ['/sbin/mount.standin', '-t', 'cvmfs'] });
    host.execHandler = (_file, args) => {
      host.mount('cvmfs2', args[args.length - 1]!, 'fuse', 1, null);
      return { code: 0, stdout: '', stderr: '' };
    };
    const m = await start();
    const s = await m.acquire(m.parse('cms.cern.ch@prod'), { id: 'a' });
    const call = host.ops('exec')[0]!;
    const conf = path.join(opts.stateDir, 'client', 'cms.cern.ch@prod.conf');
    expect(call.args).toEqual(['/sbin/mount.standin', ['-t', 'cvmfs', '-o', `config=${conf}`, 'cms.cern.ch', s.path]]);
    expect(readFileSync(conf, 'utf8')).toContain('CVMFS_REPOSITORY_TAG=prod');
    await m.acquire(m.parse('atlas.cern.ch'), { id: 'b' });
    expect(host.ops('exec')[1]!.args[1]).toEqual(['-t', 'cvmfs', 'atlas.cern.ch', path.join(opts.stateDir, 'mounts', 'atlas.cern.ch')]);

    host.execHandler = () => ({ code: 32, stdout: '', stderr: 'Failed to initialize root file catalog (16 - file catalog failure)' });
    await expect(m.acquire(m.parse('sft.cern.ch'), { id: 'c' })).rejects.toThrow(/mounting sft\.cern\.ch .* failed: Failed to initialize root file catalog/);
    host.execHandler = () => ({ code: 0, stdout: '', stderr: '' });
    await expect(m.acquire(m.parse('sft.cern.ch'), { id: 'c' })).rejects.toThrow(/succeeded but nothing is mounted/);
    expect(m.get('sft.cern.ch')).toBeUndefined();
  });

  it('tags on the host backend use the client; the plain repository stays on the host', async () => {
    const { start, host } = setup();
    host.execHandler = (_f, args) => {
      host.mount('cvmfs2', args[args.length - 1]!, 'fuse', 1, null);
      return { code: 0, stdout: '', stderr: '' };
    };
    const m = await start();
    const a = await m.acquire(m.parse('cms.cern.ch@prod'), { id: 'a' });
    const b = await m.acquire(m.parse('cms.cern.ch'), { id: 'b' });
    expect(a.backend).toBe('client');
    expect(b.backend).toBe('host');
    expect(a.path).not.toBe(b.path);
  });
});

describe('metrics', () => {
  it('volumes mounted by backend, holders and repairs', async () => {
    const { createRegistry } = await import('../../src/core/telemetry/metrics.js');
    const { metrics, registry } = await createRegistry({ defaultMetrics: false });
    const { start, host } = setup({ metrics, daemon: 'volume-plugin' });
    const m = await start();
    const s = await m.acquire(m.parse('cms.cern.ch'), { id: 'a' });
    await m.acquire(m.parse('cms.cern.ch'), { id: 'b' });
    await m.publish(m.specFrom(undefined), path.join(s.path, '..', '..', '..', 'tree-target'));
    host.broken.add(s.path);
    const origBind = host.bind.bind(host);
    host.bind = (src, t, o) => {
      host.broken.delete(t);
      origBind(src, t, o);
    };
    await m.check();
    const text = await registry.metrics();
    expect(text).toContain('cvmfs_thin_volumes_mounted{daemon="volume-plugin",backend="host"} 1');
    expect(text).toContain('cvmfs_thin_volumes_mounted{daemon="volume-plugin",backend="tree"} 1');
    expect(text).toContain('cvmfs_thin_mounts_held{daemon="volume-plugin"} 3');
    expect(text).toContain('cvmfs_thin_volume_repairs_total{daemon="volume-plugin"} 1');
  });
});

describe('close', () => {
  it('is idempotent, keeps mounts, and refuses changes afterwards', async () => {
    const { start, host } = setup();
    const m = await start();
    const s = await m.acquire(m.parse('cms.cern.ch'), { id: 'a' });
    await Promise.all([m.close(), m.close()]);
    await m.close();
    expect(host.mountedAt(s.path)).toBeDefined();
    await expect(m.acquire(m.parse('cms.cern.ch'), { id: 'b' })).rejects.toThrow(/shutting down/);
  });
});
