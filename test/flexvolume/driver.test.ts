/** The FlexVolume call-outs' semantics, unprivileged (RecordingHost). */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MountManager } from '../../src/core/volumes/manager.js';
import { isErrorCode } from '../../src/core/errors/codes.js';
import { flexCall, type FlexDeps } from '../../src/flexvolume/driver.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('cvmfs-thin-flex-');
let n = 0;

function setup(allowClientConfig = false, cvmfsTimeoutMs?: number) {
  const dir = path.join(base, `t${n++}`);
  const cvmfsRoot = path.join(dir, 'cvmfs');
  for (const r of ['atlas.cern.ch', 'lhcb.cern.ch']) {
    mkdirSync(path.join(cvmfsRoot, r), { recursive: true });
    writeFileSync(path.join(cvmfsRoot, r, 'README'), r);
  }
  const host = new RecordingHost();
  let opens = 0;
  const deps: FlexDeps = {
    allowClientConfig,
    async open() {
      opens++;
      const manager = await MountManager.open({
        stateDir: path.join(dir, 'state'),
        cvmfsRoot,
        allow: ['*.cern.ch'],
        backend: 'host',
        checkIntervalMs: 0,
        cvmfsTimeoutMs,
        host,
        log: silentLogger(),
      });
      return { manager, close: () => manager.close() };
    },
  };
  const podDir = (pod: string) => path.join(dir, 'kubelet', 'pods', pod, 'volumes', 'cern~cvmfs', 'atlas');
  return { dir, cvmfsRoot, host, deps, podDir, opens: () => opens };
}

const kubeletOpts = (extra: Record<string, string>) =>
  JSON.stringify({
    'kubernetes.io/fsType': '',
    'kubernetes.io/readwrite': 'ro',
    'kubernetes.io/pvOrVolumeName': 'atlas',
    'kubernetes.io/pod.name': 'p',
    'kubernetes.io/pod.namespace': 'default',
    'kubernetes.io/pod.uid': 'u1',
    'kubernetes.io/serviceAccount.name': 'default',
    ...extra,
  });

describe('FlexVolume cern/cvmfs', () => {
  it('init answers Success with a mount-only, no-chown, no-relabel capability set', async () => {
    const { deps, opens } = setup();
    const r = await flexCall(['init'], deps);
    expect(r).toEqual({
      code: 0,
      result: { status: 'Success', capabilities: { attach: false, selinuxRelabel: false, fsGroup: false, supportsMetrics: false, requiresFSResize: false } },
    });
    expect(opens()).toBe(0);
  });

  it('mount binds the repository read-only on the pod dir; two pods share one backend mount; unmount undoes it', async () => {
    const { deps, host, podDir } = setup();
    const a = await flexCall(['mount', podDir('u1'), kubeletOpts({ repository: 'atlas.cern.ch' })], deps);
    expect(a).toMatchObject({ code: 0, result: { status: 'Success' } });
    const b = await flexCall(['mount', podDir('u2'), kubeletOpts({ repository: 'atlas.cern.ch', 'kubernetes.io/readwrite': 'rw' })], deps);
    expect(b.code).toBe(0);
    expect(host.mountedAt(podDir('u1'))?.readonly).toBe(true);
    expect(host.mountedAt(podDir('u2'))?.readonly).toBe(true);
    expect(host.mounts.filter((m) => m.mountPoint.includes('/state/mounts/'))).toHaveLength(1);
    expect(await flexCall(['unmount', podDir('u1')], deps)).toMatchObject({ code: 0, result: { status: 'Success', message: `unmounted ${podDir('u1')}` } });
    expect(host.mounts.filter((m) => m.mountPoint.includes('/state/mounts/'))).toHaveLength(1);
    expect(await flexCall(['unmount', podDir('u2')], deps)).toMatchObject({ code: 0 });
    expect(host.mounts).toHaveLength(0);
    // kubelet may repeat an unmount (after a reboot): still Success
    expect(await flexCall(['unmount', podDir('u2')], deps)).toMatchObject({
      code: 0,
      result: { status: 'Success', message: `${podDir('u2')} is not mounted` },
    });
  });

  it.each([
    [['mount'], /mount directory/],
    [['mount', '/x'], /options JSON/],
    [['mount', '/x', '{not json'], /not valid JSON/],
    [['mount', '/x', '[1]'], /must be a JSON object/],
    [['mount', '/x', '{"repository": 5}'], /"repository" must be a string/],
    [['mount', '/x', kubeletOpts({})], /"repository" is required/],
    [['mount', '/x', kubeletOpts({ repository: 'atlas.cern.ch', server: 'evil' })], /option "server" is not known/],
    [['mount', '/x', kubeletOpts({ repository: '../../etc' })], /not a fully qualified/],
    [['mount', '/x', kubeletOpts({ repository: 'atlas.evil.org' })], /not allowed on this node/],
    [['mount', '/x', kubeletOpts({ repository: 'atlas.cern.ch', clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' })], /clientConfig" is not allowed in pod specs/],
    [['mount', 'relative/dir', kubeletOpts({ repository: 'atlas.cern.ch' })], /must be absolute/],
    [['unmount'], /mount directory/],
    [[], /no operation/],
  ])('%j fails with a clear message and its code, and mounts nothing', async (argv, re) => {
    const { deps, host } = setup();
    const r = await flexCall(argv, deps);
    expect(r.code).toBe(1);
    expect(r.result.status).toBe('Failure');
    expect(r.result.message).toMatch(re);
    expect(isErrorCode(r.result.code ?? ''), r.result.code).toBe(true);
    expect(r.result.code).not.toBe('CVMFS_THIN_INTERNAL');
    // kubelet's DriverStatus: status, message, then fields it ignores
    expect(Object.keys(JSON.parse(JSON.stringify(r.result)) as object)).toEqual(['status', 'message', 'code']);
    expect(host.mounts).toHaveLength(0);
  });

  it('a failure that is not ours (a plain Error) has the generic code', async () => {
    const { deps } = setup();
    const r = await flexCall(['unmount', '/x'], {
      ...deps,
      open: () => Promise.reject(new Error('EACCES: permission denied, open /state/flexvolume.lock')),
    });
    expect(r).toEqual({
      code: 1,
      result: { status: 'Failure', message: 'EACCES: permission denied, open /state/flexvolume.lock', code: 'CVMFS_THIN_INTERNAL' },
    });
  });

  it('attach-style calls are Not supported, with no code', async () => {
    const { deps } = setup();
    for (const op of ['attach', 'detach', 'waitforattach', 'isattached', 'mountdevice', 'getvolumename']) {
      const r = await flexCall([op, '{}'], deps);
      expect(r).toMatchObject({ code: 1, result: { status: 'Not supported' } });
      expect(Object.keys(r.result).sort()).toEqual(['message', 'status']);
    }
  });

  it('operators can allow client settings; an unmount of a mount it did not make is refused', async () => {
    const { deps, host, podDir, dir } = setup(true);
    host.execHandler = (_f, args) => {
      host.mount('cvmfs2', args[args.length - 1]!, 'fuse', 1, null);
      return { code: 0, stdout: '', stderr: '' };
    };
    expect(await flexCall(['mount', podDir('u3'), kubeletOpts({ repository: 'atlas.cern.ch', clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' })], deps)).toMatchObject({
      code: 0,
    });
    expect(host.ops('exec')).toHaveLength(1);
    const foreign = path.join(dir, 'foreign');
    mkdirSync(foreign);
    host.bind('/', foreign);
    expect(await flexCall(['unmount', foreign], deps)).toMatchObject({
      code: 1,
      result: { status: 'Failure', message: expect.stringMatching(/not mounted by cvmfs-thin/), code: 'CVMFS_THIN_TARGET_BUSY' },
    });
    expect(host.mountedAt(foreign)).toBeDefined();
  });

  it('mount of a stalled repository: Failure naming the repository and the deadline, within it; unmount of another pod answered; mount works once it answers', async () => {
    const T = 300;
    const { deps, host, podDir, cvmfsRoot } = setup(false, T);
    expect(await flexCall(['mount', podDir('u1'), kubeletOpts({ repository: 'lhcb.cern.ch' })], deps)).toMatchObject({ code: 0 });
    host.stalled.add(path.join(cvmfsRoot, 'atlas.cern.ch'));
    try {
      const t0 = Date.now();
      const r = await flexCall(['mount', podDir('u2'), kubeletOpts({ repository: 'atlas.cern.ch' })], deps);
      const ms = Date.now() - t0;
      expect(r).toEqual({
        code: 1,
        result: {
          status: 'Failure',
          message: expect.stringMatching(
            /^repository atlas\.cern\.ch: CVMFS at \S+\/atlas\.cern\.ch did not answer within 0\.3 s \(cvmfs-timeout\): the CVMFS client is stalled/,
          ),
          code: 'CVMFS_THIN_CVMFS_STALLED',
        },
      });
      expect(ms).toBeGreaterThanOrEqual(T - 20);
      expect(ms).toBeLessThan(T + 300);
      expect(host.mountedAt(podDir('u2'))).toBeUndefined();
      const t1 = Date.now();
      expect(await flexCall(['unmount', podDir('u1')], deps)).toMatchObject({ code: 0, result: { status: 'Success' } });
      expect(Date.now() - t1).toBeLessThan(T);
    } finally {
      host.unstall();
    }
    await new Promise((r) => setTimeout(r, 20));
    expect(await flexCall(['mount', podDir('u2'), kubeletOpts({ repository: 'atlas.cern.ch' })], deps)).toMatchObject({
      code: 0,
      result: { status: 'Success' },
    });
  });
});
