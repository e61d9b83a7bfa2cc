/**
 * The mount manager on the real host (as root): stand-in repositories are
 * directory trees under a stand-in CVMFS root that is a shared mount point,
 * as /cvmfs is on a node.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MountManager } from '../../src/core/volumes/manager.js';
import { MS_BIND, MS_SHARED, mount } from '../../src/core/host/sys.js';
import { needs } from '../helpers/env.js';
import { removeTestDir, shortTempDir } from '../graphdriver/harness.js';

const skip = needs({ root: true });

function mountsAt(p: string): number {
  return readMountinfo().filter((m) => m.mountPoint === p).length;
}

describe.skipIf(skip)('mount manager on real mounts', () => {
  let dir: string;
  let cvmfsRoot: string;
  let stateDir: string;
  let standinHelper: string;
  const managers: MountManager[] = [];

  beforeAll(() => {
    dir = shortTempDir('cvt-vol-');
    cvmfsRoot = path.join(dir, 'cvmfs');
    stateDir = path.join(dir, 'state');
    for (const r of ['cms.cern.ch', 'atlas.cern.ch']) {
      mkdirSync(path.join(cvmfsRoot, r, 'sw'), { recursive: true });
      writeFileSync(path.join(cvmfsRoot, r, 'sw', 'setup.sh'), `echo ${r}\n`);
    }
    // like /cvmfs on a node: a mount point with shared propagation
    mount(cvmfsRoot, cvmfsRoot, null, MS_BIND, null);
    mount('', cvmfsRoot, null, MS_SHARED, null);
    // the client backend's stand-in mount helper: binds <standin>/<repo>, keeps the config it was given
    const standin = path.join(dir, 'standin');
    mkdirSync(path.join(standin, 'lhcb.cern.ch'), { recursive: true });
    writeFileSync(path.join(standin, 'lhcb.cern.ch', 'tagged'), 'from the client');
    standinHelper = path.join(dir, 'mount.cvmfs-standin');
    writeFileSync(
      standinHelper,
      `#!/bin/sh\n# args: -t cvmfs [-o config=F] REPO DIR\nwhile [ $# -gt 2 ]; do case "$1" in -o) cp "\${2#config=}" ${dir}/last-config; shift 2;; *) shift;; esac; done\n[ -d ${standin}/$1 ] || { echo "repository $1 not found" >&2; exit 32; }\nmount --bind ${standin}/$1 "$2" && mount -o remount,bind,ro "$2"\n`,
      { mode: 0o755 },
    );
  });

  afterAll(async () => {
    for (const m of managers) await m.close().catch(() => undefined);
    removeTestDir(dir);
  });

  const open = async (backend: 'host' | 'client' = 'host') => {
    const m = await MountManager.open({
      stateDir,
      cvmfsRoot,
      allow: ['*.cern.ch'],
      backend,
      mountCommand: [standinHelper, '-t', 'cvmfs'],
      checkIntervalMs: 0,
      host: systemHost,
      log: silentLogger(),
    });
    managers.push(m);
    return m;
  };

  it('a holder gets a read-only bind of the repository; one mount for two holders; gone after the last', async () => {
    const m = await open();
    const s = await m.acquire(m.parse('cms.cern.ch'), { id: 'docker:1' });
    await m.acquire(m.parse('cms.cern.ch'), { id: 'docker:2' });
    expect(readFileSync(path.join(s.path, 'sw', 'setup.sh'), 'utf8')).toBe('echo cms.cern.ch\n');
    expect(() => writeFileSync(path.join(s.path, 'x'), 'x')).toThrow(/EROFS/);
    expect(mountsAt(s.path)).toBe(1);
    await m.release('docker:1');
    expect(mountsAt(s.path)).toBe(1);
    await m.release('docker:2');
    expect(mountsAt(s.path)).toBe(0);
    expect(existsSync(s.path)).toBe(false);
  });

  it('publish: target read-only with the files; unpublish removes mount and directory', async () => {
    const m = await open();
    const target = path.join(dir, 'pods', 'uid1', 'volumes', 'kubernetes.io~csi', 'pv', 'mount');
    await m.publish(m.parse('atlas.cern.ch'), target);
    expect(readFileSync(path.join(target, 'sw', 'setup.sh'), 'utf8')).toBe('echo atlas.cern.ch\n');
    expect(() => writeFileSync(path.join(target, 'y'), 'y')).toThrow(/EROFS/);
    expect(await m.unpublish(target)).toBe(true);
    expect(existsSync(target)).toBe(false);
    expect(readMountinfo().filter((x) => x.mountPoint.startsWith(dir) && x.mountPoint !== cvmfsRoot)).toEqual([]);
  });

  it('the whole tree: a repository mounted after publish appears in the target (slave propagation), and unmounting the target does not reach the host', async () => {
    const m = await open();
    const target = path.join(dir, 'pods', 'uid2', 'all');
    await m.publish(m.specFrom(undefined), target);
    expect(readdirSync(target).sort()).toEqual(['atlas.cern.ch', 'cms.cern.ch']);
    const late = path.join(cvmfsRoot, 'late.cern.ch');
    mkdirSync(late);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', late]);
    writeFileSync(path.join(late, 'hello'), 'automounted later');
    expect(readFileSync(path.join(target, 'late.cern.ch', 'hello'), 'utf8')).toBe('automounted later');
    expect(await m.unpublish(target)).toBe(true);
    expect(mountsAt(late)).toBe(1);
    execFileSync('umount', [late]);
  });

  it('client backend: the mount helper mounts privately with the volume settings; a failing helper is reported', async () => {
    const m = await open('client');
    const s = await m.acquire(m.parse('lhcb.cern.ch@v1'), { id: 'c1' });
    expect(readFileSync(path.join(s.path, 'tagged'), 'utf8')).toBe('from the client');
    expect(readFileSync(path.join(dir, 'last-config'), 'utf8')).toContain('CVMFS_REPOSITORY_TAG=v1');
    await expect(m.acquire(m.parse('nothere.cern.ch'), { id: 'c2' })).rejects.toThrow(/repository nothere\.cern\.ch not found/);
    await m.release('c1');
    expect(mountsAt(s.path)).toBe(0);
  });

  it('a read-only bind is read-only in the copies propagation makes in peers of a shared parent too', () => {
    const shared = path.join(dir, 'shared');
    const peer = path.join(dir, 'peer');
    mkdirSync(shared);
    mkdirSync(peer);
    mount(shared, shared, null, MS_BIND, null);
    mount('', shared, null, MS_SHARED, null);
    mount(shared, peer, null, MS_BIND, null); // peer joins the peer group (a managed plugin's propagated mount)
    const t = path.join(shared, 'vol');
    mkdirSync(t);
    systemHost.bind(path.join(cvmfsRoot, 'cms.cern.ch'), t, { readonly: true });
    expect(readFileSync(path.join(peer, 'vol', 'sw', 'setup.sh'), 'utf8')).toBe('echo cms.cern.ch\n');
    expect(() => writeFileSync(path.join(t, 'w'), 'x')).toThrow(/EROFS/);
    expect(() => writeFileSync(path.join(peer, 'vol', 'w'), 'x')).toThrow(/EROFS/);
    expect(existsSync(path.join(cvmfsRoot, 'cms.cern.ch', 'w'))).toBe(false);
  });

  it('after a crash: holders recovered, orphan and double mounts of ours removed, nothing else touched', async () => {
    const m1 = await open();
    const s = await m1.acquire(m1.parse('cms.cern.ch'), { id: 'keep' });
    // simulate what a kill -9 can leave: a second mount stacked on ours, an orphan of ours
    mount(path.join(cvmfsRoot, 'cms.cern.ch'), s.path, null, MS_BIND, null);
    const orphan = path.join(stateDir, 'mounts', 'atlas.cern.ch');
    mkdirSync(orphan, { recursive: true });
    mount(path.join(cvmfsRoot, 'atlas.cern.ch'), orphan, null, MS_BIND, null);
    const m2 = await open();
    expect(m2.get('cms.cern.ch')?.holders.map((h) => h.id)).toEqual(['keep']);
    expect(mountsAt(s.path)).toBe(1);
    expect(mountsAt(orphan)).toBe(0);
    expect(mountsAt(cvmfsRoot)).toBe(1);
    await m2.release('keep');
    expect(mountsAt(s.path)).toBe(0);
  });
});
