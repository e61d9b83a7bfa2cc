/**
 * Learning an access profile from a real start, as root: the snapshotter
 * (real host) prepares a container of a thin image, the test mounts the
 * overlay it answers (as containerd does) and runs a container-like process
 * in it (a new mount namespace, chroot, busybox); the snapshotter records
 * what it opened, maps each file to the layer that served it, and saves the
 * profile; a node that has the profile in the repository reads those files
 * ahead at the next start.
 */
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { type StartTrace, traceFile } from '../../src/core/stack/start-trace.js';
import { parseProfile, profilePath, stackId } from '../../src/core/thin/profile.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { needs, tempDir } from '../helpers/env.js';
import { mountAll, unmountAll } from '../helpers/mount.js';

const REPO = 'unpacked.cern.ch';
const execFileP = promisify(execFile);

describe.skipIf(needs({ root: true, binaries: ['busybox', 'unshare', 'chroot'] }))('access profiles learnt from a real start (root)', () => {
  const dir = tempDir('sn-record-');
  const repoRoot = path.join(dir, 'cvmfs', REPO);
  const targets: string[] = [];
  afterAll(() => {
    for (const t of targets) unmountAll(t);
  });

  const snapshotter = (root: string, record: boolean) =>
    Snapshotter.open({
      root,
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }),
      host: systemHost,
      log: silentLogger(),
      starts: { record, recordWindowMs: 1500 },
    });

  it('records the files a container opens, by layer; another node prefetches them from the repository profile', async () => {
    mkdirSync(repoRoot, { recursive: true });
    const base = addLayer(repoRoot, 'rec-base', { 'etc/os-release': 'ID=test\n', 'etc/unused': 'never read' }, { converter: true });
    mkdirSync(path.join(base.dir, 'bin'));
    copyFileSync('/bin/busybox', path.join(base.dir, 'bin', 'busybox'));
    for (const a of ['sh', 'cat']) symlinkSync('busybox', path.join(base.dir, 'bin', a));
    const app = addLayer(repoRoot, 'rec-app', { 'app/main.py': 'print(1)\n', 'etc/os-release': 'ID=app\n' }, { converter: true });
    const hexes = [base.hex, app.hex];

    const root = path.join(dir, 'node1');
    const sn = await snapshotter(root, true);
    try {
      const ex = await sn.prepare('extract', '', {});
      writeFileSync(path.join(ex[0]!.source, 'thin.json'), thinJson(REPO, [base, app]));
      await sn.commit('img', 'extract', {});
      const ms = await sn.prepare('ctr', 'img', {});
      const target = path.join(dir, 'rootfs');
      mkdirSync(target);
      targets.push(target);
      mountAll(ms, target);
      // what runc does: a new mount namespace with the rootfs bound onto itself, then chroot
      // (containerd mounts in another process: give the daemon's mount-table poll a moment to mark it)
      await new Promise((r) => setTimeout(r, 300));
      await execFileP('unshare', [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount --rbind ${target} ${target} && chroot ${target} /bin/sh -c 'cat /etc/os-release /app/main.py; echo written > /tmp-out'`,
      ]);
      await sn.startsIdle();
      unmountAll(target);
      const t = JSON.parse(readFileSync(traceFile(path.join(root, 'traces'), 'ctr'), 'utf8')) as StartTrace;
      expect(t.profile).toBe('none');
      expect(t.record).toMatchObject({ reason: expect.stringMatching(/idle|window/), saved: path.join(root, 'profiles', `${stackId(hexes)}.json`) });
      const p = parseProfile(readFileSync(t.record!.saved!, 'utf8'));
      const byPath = new Map(p.files.map((f) => [f.path, f.layer]));
      expect(byPath.get('bin/busybox')).toBe(base.hex);
      expect(byPath.get('etc/os-release')).toBe(app.hex); // the top layer's copy served it
      expect(byPath.get('app/main.py')).toBe(app.hex);
      expect(byPath.has('etc/unused')).toBe(false);
      expect(byPath.has('tmp-out')).toBe(false); // written by the container: not in CVMFS
      expect(p.layers).toEqual(hexes);

      // "publish" it into the repository; a fresh node prefetches it at the next start
      const published = path.join(repoRoot, profilePath(hexes));
      mkdirSync(path.dirname(published), { recursive: true });
      copyFileSync(t.record!.saved!, published);
    } finally {
      await sn.close();
    }
    const root2 = path.join(dir, 'node2');
    const sn2 = await snapshotter(root2, true);
    try {
      const ex = await sn2.prepare('extract', '', {});
      writeFileSync(path.join(ex[0]!.source, 'thin.json'), thinJson(REPO, [base, app]));
      await sn2.commit('img', 'extract', {});
      await sn2.prepare('ctr', 'img', {});
      await sn2.startsIdle();
      const t = JSON.parse(readFileSync(traceFile(path.join(root2, 'traces'), 'ctr'), 'utf8')) as StartTrace;
      expect(t.profile).toBe('repository');
      expect(t.prefetch).toMatchObject({ files: 3, missing: 0, failed: 0 });
      expect(t.record).toBeUndefined();
    } finally {
      await sn2.close();
    }
  });
});
