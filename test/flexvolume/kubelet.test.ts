/**
 * The FlexVolume driver as kubelet runs it (as root): `cvmfs-thin flexvolume
 * install` puts `cern~cvmfs/cvmfs` into a plugin directory, and the test execs
 * that file with kubelet's argument shapes, reading combined stdout+stderr as
 * kubelet does (any stray output would break its JSON parsing).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { CLI, needs } from '../helpers/env.js';
import { removeTestDir, shortTempDir } from '../graphdriver/harness.js';

const skip = needs({ root: true });

/** Run the installed driver as kubelet does: combined stdout+stderr must be exactly one JSON object. */
function kubeletCall(driver: string, args: string[]) {
  const r = spawnSync(driver, args, { encoding: 'utf8', timeout: 60_000 });
  const combined = `${r.stdout}${r.stderr}`;
  expect(combined.trimEnd().split('\n'), `one line of output for ${args[0]}`).toHaveLength(1);
  return { code: r.status, json: JSON.parse(combined) as { status: string; message?: string; capabilities?: Record<string, boolean> } };
}

// every call-out kubelet's driver-call.go knows besides init/mount/unmount, with its argument
// shapes, plus ones it may add later (stray flags and JSON included)
const OPTS = JSON.stringify({ repository: 'atlas.cern.ch', 'kubernetes.io/readwrite': 'ro' });
const UNKNOWN_CALL_OUTS: string[][] = [
  ['getvolumestats', '/var/lib/kubelet/pods/u/volumes/cern~cvmfs/v'],
  ['attach', OPTS, 'node-1'],
  ['detach', 'atlas', 'node-1'],
  ['waitforattach', '/dev/sdx', OPTS],
  ['isattached', OPTS, 'node-1'],
  ['mountdevice', '/var/lib/kubelet/plugins/cern~cvmfs/mounts/atlas', '/dev/sdx', OPTS],
  ['unmountdevice', '/var/lib/kubelet/plugins/cern~cvmfs/mounts/atlas'],
  ['getvolumename', OPTS],
  ['expandvolume', '/dev/sdx', OPTS, '2147483648', '1073741824'],
  ['expandfs', OPTS, '/var/lib/kubelet/pods/u/volumes/cern~cvmfs/v', '2147483648', '1073741824'],
  ['somecalloutfrom2030', '--force', '{"x":1}', ''],
];

describe('FlexVolume call-outs the driver does not implement, and its help', () => {
  let dir: string;
  let driver: string;
  let config: string;

  beforeAll(() => {
    dir = shortTempDir('cvt-flexns-');
    config = path.join(dir, 'flexvolume.toml');
    writeFileSync(config, `state-dir = "${dir}/state"\ncvmfs-root = "${dir}/cvmfs"\n`);
    const inst = spawnSync(process.execPath, [CLI, 'flexvolume', 'install', '--plugin-dir', path.join(dir, 'exec'), '--config', config], { encoding: 'utf8' });
    expect(inst.status, inst.stderr).toBe(0);
    driver = path.join(dir, 'exec', 'cern~cvmfs', 'cvmfs');
  });

  afterAll(() => removeTestDir(dir));

  it.each(UNKNOWN_CALL_OUTS)('%s … → exactly {"status":"Not supported"} and exit 1, as kubelet caches it', (...args) => {
    const r = kubeletCall(driver, args);
    expect(r.code).toBe(1);
    expect(r.json.status).toBe('Not supported');
    expect(Object.keys(r.json).sort()).toEqual(['message', 'status']);
    expect(r.json.message).toContain(JSON.stringify(args[0]));
    expect(r.json.message).toMatch(/init, mount, unmount/);
  });

  it('logs unknown call-outs to its log file, never to kubelet', () => {
    kubeletCall(driver, ['getvolumestats', '/x']);
    expect(readFileSync(path.join(dir, 'state', 'flexvolume.log'), 'utf8')).toMatch(/"call":"getvolumestats".*"status":"Not supported"/);
  });

  it('answers Not supported even when its settings cannot be read; init then fails naming the file', () => {
    const broken = path.join(dir, 'broken.toml');
    writeFileSync(broken, 'state-dir = "/x"\n');
    const inst = spawnSync(process.execPath, [CLI, 'flexvolume', 'install', '--plugin-dir', path.join(dir, 'exec-broken'), '--config', broken], {
      encoding: 'utf8',
    });
    expect(inst.status, inst.stderr).toBe(0);
    writeFileSync(broken, 'state-dir = [\n'); // broken after install (an operator's edit)
    const d = path.join(dir, 'exec-broken', 'cern~cvmfs', 'cvmfs');
    expect(kubeletCall(d, ['getvolumename', OPTS])).toMatchObject({ code: 1, json: { status: 'Not supported' } });
    const init = kubeletCall(d, ['init']);
    expect(init).toMatchObject({ code: 1, json: { status: 'Failure' } });
    expect(init.json.message).toContain(broken);
    // the code of the failure beside kubelet's fields (src/edge/error-policy.ts)
    expect(init.json).toMatchObject({ code: expect.stringMatching(/^CVMFS_THIN_(?!INTERNAL$)[A-Z_]+$/) });
  });

  it('--help lists the call-outs init, mount, unmount and install', () => {
    const r = spawnSync(process.execPath, [CLI, 'flexvolume', '--help'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    for (const c of ['init', 'mount <dir> <options-json>', 'unmount <dir>', 'install'])
      expect(
        r.stdout.split('\n').some((l) => l.trimStart().startsWith(`${c} `)),
        c,
      ).toBe(true);
    expect(r.stdout).toMatch(/Not supported/);
    const m = spawnSync(process.execPath, [CLI, 'flexvolume', 'mount', '--help'], { encoding: 'utf8' });
    expect(m.status, m.stderr).toBe(0);
    expect(m.stdout).toMatch(/Usage: cvmfs-thin flexvolume mount \[options\] <dir> <options-json>/);
  });
});

describe.skipIf(skip)('FlexVolume cern/cvmfs exec’d like kubelet', () => {
  let dir: string;
  let driver: string;
  let config: string;

  const call = (...args: string[]) => {
    const r = spawnSync(driver, args, { encoding: 'utf8', timeout: 60_000 });
    const combined = `${r.stdout}${r.stderr}`;
    return { code: r.status, json: JSON.parse(combined) as { status: string; message?: string; capabilities?: Record<string, boolean> } };
  };
  const podDir = (uid: string, vol: string) => path.join(dir, 'kubelet', 'pods', uid, 'volumes', 'cern~cvmfs', vol);
  const opts = (repo: string, uid: string) =>
    JSON.stringify({
      repository: repo,
      'kubernetes.io/fsType': '',
      'kubernetes.io/readwrite': 'ro',
      'kubernetes.io/pod.uid': uid,
      'kubernetes.io/pvOrVolumeName': repo.split('.')[0],
    });

  beforeAll(() => {
    dir = shortTempDir('cvt-flex-');
    const cvmfs = path.join(dir, 'cvmfs');
    for (const r of ['atlas.cern.ch', 'lhcb.cern.ch']) {
      mkdirSync(path.join(cvmfs, r), { recursive: true });
      writeFileSync(path.join(cvmfs, r, 'README'), `this is ${r}`);
    }
    config = path.join(dir, 'flexvolume.toml');
    writeFileSync(config, `state-dir = "${dir}/state"\ncvmfs-root = "${cvmfs}"\nallowed-repositories = ["*.cern.ch"]\nlog-level = "debug"\n`);
    const inst = spawnSync(process.execPath, [CLI, 'flexvolume', 'install', '--plugin-dir', path.join(dir, 'exec'), '--config', config], { encoding: 'utf8' });
    expect(inst.status, inst.stderr).toBe(0);
    driver = path.join(dir, 'exec', 'cern~cvmfs', 'cvmfs');
  });

  afterAll(() => removeTestDir(dir));

  it('install writes an executable driver that kubelet can discover', () => {
    expect(statSync(driver).mode & 0o111).not.toBe(0);
    expect(readFileSync(driver, 'utf8')).toContain('flexvolume "$@"');
  });

  it('init, mount for two pods, unmount: one JSON object per call, read-only binds, logs to the file', () => {
    expect(call('init')).toEqual({
      code: 0,
      json: { status: 'Success', capabilities: { attach: false, selinuxRelabel: false, fsGroup: false, supportsMetrics: false, requiresFSResize: false } },
    });
    const a = podDir('uid-a', 'atlas');
    const b = podDir('uid-b', 'atlas');
    expect(call('mount', a, opts('atlas.cern.ch', 'uid-a'))).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(call('mount', b, opts('atlas.cern.ch', 'uid-b'))).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(readFileSync(path.join(a, 'README'), 'utf8')).toBe('this is atlas.cern.ch');
    expect(() => writeFileSync(path.join(b, 'x'), 'x')).toThrow(/EROFS/);
    const backend = readMountinfo().filter((m) => m.mountPoint.startsWith(path.join(dir, 'state', 'mounts')));
    expect(backend).toHaveLength(1);
    expect(call('unmount', a)).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(existsSync(a)).toBe(false);
    expect(call('unmount', b)).toMatchObject({ code: 0, json: { status: 'Success' } });
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(`${dir}/`))).toEqual([]);
    expect(readFileSync(path.join(dir, 'state', 'flexvolume.log'), 'utf8')).toMatch(/"call":"mount"/);
  });

  it('bad input: a clear Failure, exit 1, nothing mounted', () => {
    const c = podDir('uid-c', 'x');
    const r = call('mount', c, opts('../../../etc', 'uid-c'));
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({
      status: 'Failure',
      message: expect.stringMatching(/not a fully qualified CVMFS repository name/),
      code: expect.stringMatching(/^CVMFS_THIN_(?!INTERNAL$)[A-Z_]+$/),
    });
    expect(call('mount', c, 'not json')).toMatchObject({ code: 1, json: { status: 'Failure' } });
    expect(call('attach', '{}', 'node1')).toMatchObject({ code: 1, json: { status: 'Not supported' } });
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(`${dir}/`))).toEqual([]);
  });

  it('concurrent mounts of one repository for ten pods serialise on the state lock: all succeed, one backend mount', async () => {
    const { spawn } = await import('node:child_process');
    const run = (uid: string) =>
      new Promise<number | null>((resolve) => {
        const p = spawn(driver, ['mount', podDir(uid, 'lhcb'), opts('lhcb.cern.ch', uid)], { stdio: 'ignore' });
        p.once('exit', resolve);
      });
    const codes = await Promise.all(Array.from({ length: 10 }, (_, i) => run(`uid-${i}`)));
    expect(codes).toEqual(Array(10).fill(0));
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(path.join(dir, 'state', 'mounts')))).toHaveLength(1);
    for (let i = 0; i < 10; i++) expect(call('unmount', podDir(`uid-${i}`, 'lhcb')).code).toBe(0);
    expect(readMountinfo().filter((m) => m.mountPoint.startsWith(`${dir}/`))).toEqual([]);
  });
});
