/**
 * `cvmfs-thin csi` as a real process (the built CLI) with real bind mounts (root): read-only
 * targets, the whole tree seeing a repository mounted after publish, and
 * kill -9 + restart with volumes published.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REMOUNT, MS_SHARED, mount, umount } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';
import { code, type CsiPlugin, KubeletPaths, mountInline, mountPv, startCsiPlugin } from './kubelet.js';

const skip = needs({ root: true });

describe.skipIf(skip)('CSI plugin with real mounts (root)', () => {
  const dir = tempDir('cvmfs-thin-csi-mounts-');
  const cvmfs = path.join(dir, 'cvmfs');
  const state = path.join(dir, 'state');
  const socket = path.join(dir, 'csi.sock');
  const k = new KubeletPaths(path.join(dir, 'kubelet'));
  const args = ['--state-dir', state, '--cvmfs-root', cvmfs, '--allowed-repository', '*.cern.ch', '--log-level', 'debug'];
  const late = path.join(cvmfs, 'newrepo.cern.ch');
  let plugin: CsiPlugin | undefined;

  /** Mount points at or below a directory, from this process's (the plugin's) mount table. */
  const mountsUnder = (d: string) => readMountinfo().filter((m) => m.mountPoint === d || m.mountPoint.startsWith(`${d}/`));
  const ours = () => [...mountsUnder(path.join(dir, 'kubelet')), ...mountsUnder(state)];

  beforeAll(() => {
    for (const repo of ['atlas.cern.ch', 'cms.cern.ch']) {
      mkdirSync(path.join(cvmfs, repo), { recursive: true });
      writeFileSync(path.join(cvmfs, repo, 'README'), `this is ${repo}\n`);
    }
    mkdirSync(late);
    // the stand-in /cvmfs: a mount point of its own, in a peer group of its own, shared (like autofs' /cvmfs)
    mount(cvmfs, cvmfs, null, MS_BIND, null);
    mount('', cvmfs, null, MS_PRIVATE, null);
    mount('', cvmfs, null, MS_SHARED, null);
  });

  afterAll(async () => {
    await plugin?.stop('SIGKILL');
    // whatever a failed test left behind, deepest first; the stand-in last
    for (const m of [...ours(), ...mountsUnder(cvmfs), ...mountsUnder(path.join(dir, 'late-src'))].sort((a, b) => b.mountPoint.length - a.mountPoint.length)) {
      try {
        umount(m.mountPoint, MNT_DETACH);
      } catch {
        /* gone with its parent */
      }
    }
  });

  it('publishes a repository read-only: files visible, writes fail with EROFS', async () => {
    plugin = await startCsiPlugin(args, socket, 'node-root');
    const c = plugin.client;
    const { staging, target } = await mountPv(c, k, { handle: 'pv-atlas', attrs: { repository: 'atlas.cern.ch' } }, { name: 'p1', uid: 'uid-1' });
    expect(readFileSync(path.join(target, 'README'), 'utf8')).toBe('this is atlas.cern.ch\n');
    for (const p of [target, staging]) {
      expect(() => writeFileSync(path.join(p, 'new'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
      expect(() => writeFileSync(path.join(p, 'README'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
      expect(() => mkdirSync(path.join(p, 'd'))).toThrow(expect.objectContaining({ code: 'EROFS' }));
    }
    // exactly one backend mount, one staging bind, one target bind
    expect(mountsUnder(path.join(state, 'mounts'))).toHaveLength(1);
    expect(mountsUnder(staging)).toHaveLength(1);
    expect(mountsUnder(target)).toHaveLength(1);
    expect(await code(c.unpublish('pv-atlas', target))).toBe(status.OK);
    expect(await code(c.unstage('pv-atlas', staging))).toBe(status.OK);
    expect(existsSync(target)).toBe(false);
    expect(ours()).toEqual([]);
  });

  it('whole-tree volumes (staged PV and inline) see a repository mounted after publish; the pod cannot unmount it on the host', async () => {
    const c = plugin!.client;
    const pv = await mountPv(c, k, { handle: 'pv-all', attrs: {} }, { name: 'p2', uid: 'uid-2' });
    const inline = await mountInline(c, k, {}, { name: 'p3', uid: 'uid-3' });
    for (const t of [pv.target, inline.target]) {
      expect(readFileSync(path.join(t, 'cms.cern.ch/README'), 'utf8')).toBe('this is cms.cern.ch\n');
      expect(existsSync(path.join(t, 'newrepo.cern.ch/hello'))).toBe(false);
    }
    // "autofs" mounts a repository after the pods started; read-only like cvmfs2's mounts (a mount
    // that arrives by propagation keeps its own flags, the target's ro does not apply to it)
    const src = path.join(dir, 'late-src');
    mkdirSync(src);
    mount('tmpfs', src, 'tmpfs', 0, 'size=1m');
    writeFileSync(path.join(src, 'hello'), 'late repository\n');
    mount('', src, null, MS_REMOUNT | MS_RDONLY, null);
    mount(src, late, null, MS_BIND, null);
    for (const t of [pv.staging, pv.target, inline.target]) {
      expect(readFileSync(path.join(t, 'newrepo.cern.ch/hello'), 'utf8')).toBe('late repository\n');
      expect(() => writeFileSync(path.join(t, 'newrepo.cern.ch/x'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    }
    // slave propagation: an unmount inside the target does not reach the host's tree
    umount(path.join(inline.target, 'newrepo.cern.ch'));
    expect(readFileSync(path.join(late, 'hello'), 'utf8')).toBe('late repository\n');
    expect(readFileSync(path.join(pv.target, 'newrepo.cern.ch/hello'), 'utf8')).toBe('late repository\n');

    expect(await code(c.unpublish(inline.volumeId, inline.target))).toBe(status.OK);
    expect(await code(c.unpublish('pv-all', pv.target))).toBe(status.OK);
    expect(await code(c.unstage('pv-all', pv.staging))).toBe(status.OK);
    expect(ours()).toEqual([]);
    // the host's tree is untouched
    expect(readFileSync(path.join(late, 'hello'), 'utf8')).toBe('late repository\n');
    umount(late);
    umount(src);
  });

  it('kill -9 with volumes published, restart: state recovered, no double mount, unpublish works, nothing leaked', async () => {
    let c = plugin!.client;
    const pv = await mountPv(c, k, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'p4', uid: 'uid-4' });
    const inline = await mountInline(c, k, { repository: 'atlas.cern.ch' }, { name: 'p5', uid: 'uid-5' });
    const tree = await mountPv(c, k, { handle: 'pv-tree', attrs: {} }, { name: 'p6', uid: 'uid-6' });
    const before = ours().length;
    expect(mountsUnder(path.join(state, 'mounts'))).toHaveLength(2);

    await plugin!.stop('SIGKILL');
    expect(existsSync(socket)).toBe(true); // left behind by the crash
    // the pods keep their files while the plugin is down
    expect(readFileSync(path.join(pv.target, 'README'), 'utf8')).toBe('this is cms.cern.ch\n');
    expect(readFileSync(path.join(inline.target, 'README'), 'utf8')).toBe('this is atlas.cern.ch\n');

    plugin = await startCsiPlugin(args, socket, 'node-root');
    c = plugin.client;
    expect(plugin.output()).toMatch(/"volumes":3/);
    expect(ours().length).toBe(before);

    // kubelet retries the same calls after the restart: OK, nothing mounted twice
    const again = await mountPv(c, k, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'p4', uid: 'uid-4' });
    expect(again).toEqual(pv);
    expect(mountsUnder(pv.target)).toHaveLength(1);
    expect(mountsUnder(pv.staging)).toHaveLength(1);
    expect(ours().length).toBe(before);
    expect((await c.stats('pv-cms', pv.target)).volumeCondition?.abnormal).toBe(false);

    for (const [id, t] of [
      ['pv-cms', pv.target],
      [inline.volumeId, inline.target],
      ['pv-tree', tree.target],
    ] as const) {
      expect(await code(c.unpublish(id, t))).toBe(status.OK);
      expect(existsSync(t)).toBe(false);
    }
    expect(await code(c.unstage('pv-cms', pv.staging))).toBe(status.OK);
    expect(await code(c.unstage('pv-tree', tree.staging))).toBe(status.OK);
    expect(ours()).toEqual([]);
    await plugin.stop('SIGTERM');
    expect(plugin.proc.exitCode).toBe(0);
    expect(existsSync(socket)).toBe(false);
  });
});
