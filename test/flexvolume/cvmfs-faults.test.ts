/**
 * The FlexVolume driver exec'd like kubelet over a real FUSE client that
 * stalls or dies: a fuse-overlayfs mount stands in for /cvmfs/cms.cern.ch
 * (test/helpers/fuse-standin.ts), /cvmfs/atlas.cern.ch is a plain directory,
 * the driver's config sets `cvmfs-timeout = 1`. `kill -STOP`: a mount call
 * answers Failure naming the repository and the deadline, within it; calls
 * for other pods are answered (each call reconciles at start, so one that
 * finds the stalled mount waits one deadline at most). `kill -9` and a new
 * client: the next call mounts ours again and binds the pod's dir again.
 * Needs root and fuse-overlayfs.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLI, needs } from '../helpers/env.js';
import { errnoOf, StandinCvmfs } from '../helpers/fuse-standin.js';

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('FlexVolume cern/cvmfs over a CVMFS client that stalls or dies (real FUSE)', () => {
  const host = new StandinCvmfs('flex-cvmfs-faults-');
  let driver: string;

  const call = (...args: string[]) => {
    const t0 = Date.now();
    const r = spawnSync(driver, args, { encoding: 'utf8', timeout: 30_000 });
    return { code: r.status, json: JSON.parse(`${r.stdout}${r.stderr}`) as { status: string; message?: string }, ms: Date.now() - t0 };
  };
  const podDir = (uid: string, vol: string) => path.join(host.dir, 'kubelet', 'pods', uid, 'volumes', 'cern~cvmfs', vol);
  const opts = (repo: string) => JSON.stringify({ repository: repo, 'kubernetes.io/readwrite': 'ro' });

  beforeEach(async () => {
    await host.setUp();
    const config = path.join(host.dir, 'flexvolume.toml');
    writeFileSync(config, `state-dir = "${host.dir}/state"\ncvmfs-root = "${host.cvmfs}"\nallowed-repositories = ["*.cern.ch"]\ncvmfs-timeout = 1\n`);
    const inst = spawnSync(process.execPath, [CLI, 'flexvolume', 'install', '--plugin-dir', path.join(host.dir, 'exec'), '--config', config], {
      encoding: 'utf8',
    });
    expect(inst.status, inst.stderr).toBe(0);
    driver = path.join(host.dir, 'exec', 'cern~cvmfs', 'cvmfs');
  });

  afterEach(async () => {
    await host.tearDown();
  });

  it('a stalled client: mount answers Failure naming the repository and the deadline, within it; other pods are answered; it works again after kill -CONT', () => {
    expect(call('mount', podDir('u1', 'cms'), opts('cms.cern.ch'))).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(readFileSync(path.join(podDir('u1', 'cms'), 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect(call('mount', podDir('u2', 'atlas'), opts('atlas.cern.ch'))).toMatchObject({ code: 0 });
    const idle = call('unmount', podDir('u2', 'atlas'));
    expect(idle.code).toBe(0);
    expect(call('mount', podDir('u2', 'atlas'), opts('atlas.cern.ch')).code).toBe(0);

    host.cms.stop();
    const f = call('mount', podDir('u3', 'cms'), opts('cms.cern.ch'));
    expect(f.code).toBe(1);
    expect(f.json.status).toBe('Failure');
    expect(f.json.message).toMatch(
      /^repository cms\.cern\.ch: CVMFS at \S+ (did not answer within 1 s \(cvmfs-timeout\)|has not answered for [\d.]+ s \(deadline 1 s, cvmfs-timeout\)): the CVMFS client is stalled \(server or proxy unreachable\?\)$/,
    );
    // one deadline (the start-up check finds the stalled mount, the mount then fails at once) plus a process start
    expect(f.ms).toBeGreaterThanOrEqual(950);
    expect(f.ms).toBeLessThan(idle.ms + 2000);
    // another pod's unmount: answered, after at most one deadline
    const other = call('unmount', podDir('u2', 'atlas'));
    expect(other).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(other.ms).toBeLessThan(idle.ms + 2000);
    process.stderr.write(
      `[figure] FlexVolume mount on a stalled repository: Failure after ${f.ms} ms; unmount of another pod ${other.ms} ms (${idle.ms} ms without a stall; cvmfs-timeout 1 s)\n`,
    );
    // the stalled pod's own unmount needs no answer from CVMFS
    expect(call('unmount', podDir('u1', 'cms'))).toMatchObject({ code: 0, json: { status: 'Success' } });

    host.cms.cont();
    expect(call('mount', podDir('u3', 'cms'), opts('cms.cern.ch'))).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(readFileSync(path.join(podDir('u3', 'cms'), 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect(call('unmount', podDir('u3', 'cms')).code).toBe(0);
  });

  it('a killed client, then a new one on the host: the next call mounts ours again and binds the pod dir again', async () => {
    expect(call('mount', podDir('u1', 'cms'), opts('cms.cern.ch')).code).toBe(0);
    const hello = path.join(podDir('u1', 'cms'), 'etc', 'hello');
    await host.cms.kill9();
    expect(errnoOf(() => readFileSync(hello))).toBe('ENOTCONN');
    const dead = call('mount', podDir('u2', 'cms'), opts('cms.cern.ch'));
    expect(dead.json.message).toMatch(/repository cms\.cern\.ch: \S+ is broken on the host \(Transport endpoint is not connected/);
    await host.newClient();
    expect(call('mount', podDir('u2', 'cms'), opts('cms.cern.ch'))).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(readFileSync(hello, 'utf8')).toBe('hello from cms\n');
    expect(readFileSync(path.join(podDir('u2', 'cms'), 'etc', 'hello'), 'utf8')).toBe('hello from cms\n');
    expect(readFileSync(path.join(host.dir, 'state', 'flexvolume.log'), 'utf8')).toContain('broken repository mount repaired');
    for (const u of ['u1', 'u2']) expect(call('unmount', podDir(u, 'cms')).code).toBe(0);
  });
});
