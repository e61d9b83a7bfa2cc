/**
 * `cvmfs-thin volume-plugin` as a process (the built CLI) over a real FUSE
 * client that stalls or dies: a fuse-overlayfs mount stands in for
 * /cvmfs/cms.cern.ch (test/helpers/fuse-standin.ts), /cvmfs/atlas.cern.ch is
 * a plain directory. `kill -STOP`: Mount fails within --cvmfs-timeout with an
 * Err naming the repository and the deadline, while List, Get, Path and
 * Unmount are answered; it works again after `kill -CONT`; SIGTERM still
 * stops the plugin. `kill -9`: detected by the check, our mount kept until
 * the host's repository is mounted again, then mounted again. Needs root and
 * fuse-overlayfs. The test never touches a stopped mount itself.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { errnoOf, StandinCvmfs, until } from '../helpers/fuse-standin.js';
import { pluginCall } from '../graphdriver/harness.js';
import { mountCount, startVolumePlugin, type VolumePlugin } from './harness.js';

const TIMEOUT_S = 1;
const ID = (n: number) => n.toString(16).padStart(64, 'c');

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('volume plugin over a CVMFS client that stalls or dies (real FUSE)', () => {
  const host = new StandinCvmfs('dv-cvmfs-faults-');
  let socket: string;
  let mounts: string;
  let plugin: VolumePlugin | undefined;

  const call = async (m: string, body: unknown) => {
    const t0 = Date.now();
    const r = await pluginCall(socket, `VolumeDriver.${m}`, body);
    return { status: r.status, json: r.json(), ms: Date.now() - t0 };
  };

  beforeEach(async () => {
    await host.setUp();
    socket = path.join(host.dir, 'cvmfs.sock');
    mounts = path.join(host.dir, 'state', 'mounts');
    plugin = await startVolumePlugin(
      'unused',
      [
        '--state-dir',
        path.join(host.dir, 'state'),
        '--cvmfs-root',
        host.cvmfs,
        '--allowed-repository',
        '*.cern.ch',
        '--cvmfs-timeout',
        String(TIMEOUT_S),
        '--check-interval',
        '1',
      ],
      { socket },
    );
  });

  afterEach(async () => {
    if (plugin && plugin.proc.exitCode === null && plugin.proc.signalCode === null) await plugin.stop('SIGKILL');
    plugin = undefined;
    await host.tearDown();
  });

  it('a stalled client: Mount fails within --cvmfs-timeout naming the repository, other calls are answered meanwhile; it works again once the client answers', async () => {
    const cms = await call('Mount', { Name: 'cms.cern.ch', ID: ID(1) });
    expect(cms.status).toBe(200);
    const cmsPath = cms.json['Mountpoint'] as string;
    expect(readFileSync(path.join(cmsPath, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect((await call('Mount', { Name: 'atlas.cern.ch', ID: ID(2) })).status).toBe(200);

    host.cms.stop();
    const t0 = Date.now();
    // two new containers on the stalled volume
    const stalled = [call('Mount', { Name: 'cms.cern.ch', ID: ID(3) }), call('Mount', { Name: 'cms.cern.ch', ID: ID(4) })];
    await new Promise((r) => setTimeout(r, 100));
    const others = [
      await call('List', {}),
      await call('Get', { Name: 'cms.cern.ch' }),
      await call('Path', { Name: 'atlas.cern.ch' }),
      await call('Capabilities', {}),
      await call('Unmount', { Name: 'atlas.cern.ch', ID: ID(2) }),
      await call('Mount', { Name: 'atlas.cern.ch', ID: ID(5) }),
    ];
    for (const o of others) {
      expect(o.status).toBe(200);
      expect(o.ms).toBeLessThan(500);
    }
    expect((others[0]!.json['Volumes'] as { Name: string }[]).map((v) => v.Name)).toEqual(['atlas.cern.ch', 'cms.cern.ch']);
    const fs = await Promise.all(stalled);
    for (const f of fs) {
      expect(f.status).toBe(503);
      expect(f.json['Err']).toMatch(
        /^repository cms\.cern\.ch: CVMFS at \S+\/cms\.cern\.ch (did not answer within 1 s \(cvmfs-timeout\)|has not answered for [\d.]+ s \(deadline 1 s, cvmfs-timeout\)): the CVMFS client is stalled \(server or proxy unreachable\?\)$/,
      );
    }
    const slowest = Math.max(...fs.map((f) => f.ms));
    expect(slowest).toBeGreaterThanOrEqual(TIMEOUT_S * 1000 - 50);
    expect(slowest).toBeLessThan(TIMEOUT_S * 1000 + 1000);
    process.stderr.write(`[figure] volume plugin Mount on a stalled repository failed after ${slowest} ms (cvmfs-timeout ${TIMEOUT_S} s)\n`);
    // known to stall: at once
    const fast = await call('Mount', { Name: 'cms.cern.ch', ID: ID(6) });
    expect(fast.status).toBe(503);
    expect(fast.json['Err']).toMatch(/has not answered for/);
    expect(fast.ms).toBeLessThan(300);
    // a stall is not a dead client: nothing was unmounted or remounted, the check too leaves it alone
    await new Promise((r) => setTimeout(r, 1500));
    expect(mountCount(cmsPath)).toBe(1);
    expect(plugin!.output()).not.toContain('mounting it again');
    expect(plugin!.output()).toContain('CVMFS does not answer within the deadline');
    expect(Date.now() - t0).toBeLessThan(10_000);

    // it answers again: so does the plugin
    host.cms.cont();
    let ok = await call('Mount', { Name: 'cms.cern.ch', ID: ID(3) });
    for (let i = 0; i < 30 && ok.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      ok = await call('Mount', { Name: 'cms.cern.ch', ID: ID(3) });
    }
    expect([ok.status, ok.json]).toEqual([200, { Mountpoint: cmsPath }]);
    expect(readFileSync(path.join(cmsPath, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');

    // stalled again with a probe stuck: Unmount still works and SIGTERM still stops the plugin
    host.cms.stop();
    const stuck = call('Mount', { Name: 'cms.cern.ch', ID: ID(7) });
    await new Promise((r) => setTimeout(r, 200));
    expect((await call('Unmount', { Name: 'cms.cern.ch', ID: ID(1) })).status).toBe(200);
    expect((await stuck).status).toBe(503);
    expect((await call('Unmount', { Name: 'cms.cern.ch', ID: ID(3) })).status).toBe(200);
    expect(mountCount(cmsPath)).toBe(0);
    const t2 = Date.now();
    expect(await plugin!.stop('SIGTERM')).toBe(0);
    expect(Date.now() - t2).toBeLessThan(5000);
  });

  it('a killed client: Mount fails at once; our mount is kept while the host has none, and mounted again by the check once the host has a new client', async () => {
    const cms = await call('Mount', { Name: 'cms.cern.ch', ID: ID(1) });
    const cmsPath = cms.json['Mountpoint'] as string;
    expect(readFileSync(path.join(cmsPath, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');

    await host.cms.kill9();
    expect(errnoOf(() => readFileSync(path.join(cmsPath, 'etc', 'hello')))).toBe('ENOTCONN');
    const dead = await call('Mount', { Name: 'cms.cern.ch', ID: ID(2) });
    expect(dead.status).toBe(503);
    expect(dead.json['Err']).toBe(
      `repository cms.cern.ch: ${path.join(host.cvmfs, 'cms.cern.ch')} is broken on the host (Transport endpoint is not connected: the CVMFS client died; remount it on the host)`,
    );
    expect(dead.ms).toBeLessThan(500);
    // the check (every second) finds it, cannot repair it yet, and keeps our mount
    await until(() => /broken repository mount could not be repaired/.test(plugin!.output()));
    expect(plugin!.output()).toMatch(/broken repository mount could not be repaired/);
    expect(mountCount(cmsPath)).toBe(1);

    // the admin (or autofs) mounts a new client
    await host.newClient();
    expect(await until(() => errnoOf(() => readFileSync(path.join(cmsPath, 'etc', 'hello'))) === 'ok')).toBe(true);
    expect(readFileSync(path.join(cmsPath, 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect(mountCount(cmsPath)).toBe(1);
    expect(plugin!.output()).toContain('broken repository mount repaired');
    expect((await call('Mount', { Name: 'cms.cern.ch', ID: ID(2) })).json).toEqual({ Mountpoint: cmsPath });
    for (const id of [1, 2]) expect((await call('Unmount', { Name: 'cms.cern.ch', ID: ID(id) })).status).toBe(200);
    expect(mountCount(cmsPath)).toBe(0);
    expect(mountCount(path.join(mounts, 'cms.cern.ch'))).toBe(0);
  });
});
