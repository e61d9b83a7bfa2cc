/**
 * `cvmfs-thin doctor`, the CVMFS client part (src/ops/doctor-cvmfs.ts):
 * showconfig parsing and what each setting means for images; the client's
 * programs as fake scripts on PATH (run for real, through the real host);
 * dead and stalled mounts and the containers on them through the recording
 * host; then, as root, a real FUSE client killed and stopped under a real
 * container overlay, checked by runDoctor and by the CLI.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { systemHost } from '../../src/core/host/host.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { CvmfsProbe } from '../../src/core/host/probe.js';
import type { Check } from '../../src/ops/doctor.js';
import { runDoctor } from '../../src/ops/doctor.js';
import { configChecks, cvmfsClientChecks, cvmfsMountChecks, isCvmfsMount, parseShowconfig, talkSocket } from '../../src/ops/doctor-cvmfs.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { runCli } from '../helpers/daemon.js';
import { needs, tempDir } from '../helpers/env.js';
import { FuseStandin } from '../helpers/fuse-standin.js';
import { mountAll, unmountAll } from '../helpers/mount.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('doctor-cvmfs-');
let n = 0;
const fresh = () => {
  const d = path.join(base, String(n++));
  mkdirSync(d, { recursive: true });
  return d;
};
const byId = (cs: Check[], id: string) => cs.filter((c) => c.id === id);

/** What `cvmfs_config showconfig unpacked.cern.ch` prints on a stock client (CVMFS 2.12), trimmed. */
const STOCK = `CVMFS_REPOSITORY_NAME=unpacked.cern.ch
CVMFS_BACKOFF_INIT=2    # from /etc/cvmfs/default.conf
CVMFS_CACHE_BASE=/var/lib/cvmfs    # from /etc/cvmfs/default.conf
CVMFS_CACHE_DIR=
CVMFS_CLAIM_OWNERSHIP=yes    # from /etc/cvmfs/default.conf
CVMFS_HIDE_MAGIC_XATTRS=
CVMFS_HTTP_PROXY=
CVMFS_QUOTA_LIMIT=4000    # from /etc/cvmfs/default.conf
CVMFS_SERVER_URL='http://cvmfs-stratum-one.cern.ch/cvmfs/unpacked.cern.ch;http://cernvmfs.gridpp.rl.ac.uk/cvmfs/unpacked.cern.ch'    # from /etc/cvmfs/domain.d/cern.ch.conf
CVMFS_SHARED_CACHE=yes    # from /etc/cvmfs/default.conf
CVMFS_STRANGE='it\\'s'    # from /etc/cvmfs/default.local
`;

describe('the CVMFS client configuration', () => {
  it('parses showconfig: plain and quoted values, where each comes from, unset keys', () => {
    const c = parseShowconfig(STOCK);
    expect(c.get('CVMFS_REPOSITORY_NAME')).toEqual({ value: 'unpacked.cern.ch' });
    expect(c.get('CVMFS_CLAIM_OWNERSHIP')).toEqual({ value: 'yes', from: '/etc/cvmfs/default.conf' });
    expect(c.get('CVMFS_HTTP_PROXY')).toEqual({ value: '' });
    expect(c.get('CVMFS_SERVER_URL')).toEqual({
      value: 'http://cvmfs-stratum-one.cern.ch/cvmfs/unpacked.cern.ch;http://cernvmfs.gridpp.rl.ac.uk/cvmfs/unpacked.cern.ch',
      from: '/etc/cvmfs/domain.d/cern.ch.conf',
    });
    expect(c.get('CVMFS_STRANGE')).toEqual({ value: "it's", from: '/etc/cvmfs/default.local' });
    expect(talkSocket('unpacked.cern.ch', c)).toBe('/var/lib/cvmfs/shared/cvmfs_io.unpacked.cern.ch');
    expect(talkSocket('unpacked.cern.ch', parseShowconfig('CVMFS_CACHE_BASE=/c\nCVMFS_SHARED_CACHE=no\n'))).toBe(
      '/c/unpacked.cern.ch/cvmfs_io.unpacked.cern.ch',
    );
    expect(talkSocket('x.cern.ch', parseShowconfig('CVMFS_WORKSPACE=/w\nCVMFS_CACHE_BASE=/c\n'))).toBe('/w/cvmfs_io.x.cern.ch');
  });

  it('a stock client: owners lost (claim ownership), no proxy; a small quota and visible magic xattrs warn too; a good one passes', () => {
    const stock = configChecks('unpacked.cern.ch', parseShowconfig(STOCK));
    expect(stock[0]).toMatchObject({ status: 'pass', detail: expect.stringContaining('CVMFS_SERVER_URL=http://cvmfs-stratum-one.cern.ch/') });
    expect(stock[0]!.detail).toContain('CVMFS_QUOTA_LIMIT=4000 MB (from /etc/cvmfs/default.conf)');
    const warns = stock.filter((c) => c.status === 'warn');
    expect(warns.map((w) => w.detail.split(':')[1]!.trim().split('=')[0])).toEqual(['CVMFS_CLAIM_OWNERSHIP', 'CVMFS_HTTP_PROXY is not set']);
    expect(warns[0]).toMatchObject({
      detail: expect.stringContaining('the owners in images are lost'),
      fix: expect.stringContaining('CVMFS_CLAIM_OWNERSHIP=no'),
    });
    const worse = configChecks('x.cern.ch', parseShowconfig(`${STOCK}CVMFS_QUOTA_LIMIT=500\nCVMFS_HIDE_MAGIC_XATTRS=no\nCVMFS_SERVER_URL=\n`));
    expect(worse[0]).toMatchObject({ status: 'fail', fix: expect.stringContaining('no server') });
    expect(worse.map((c) => c.detail)).toEqual(
      expect.arrayContaining([
        expect.stringContaining('CVMFS_QUOTA_LIMIT=500 MB: a cache smaller than 1 GiB'),
        expect.stringContaining('CVMFS_HIDE_MAGIC_XATTRS=no: every file lists'),
      ]),
    );
    const good = configChecks(
      'unpacked.cern.ch',
      parseShowconfig(`${STOCK}CVMFS_CLAIM_OWNERSHIP=no\nCVMFS_HTTP_PROXY='http://squid:3128'\nCVMFS_QUOTA_LIMIT=-1\n`),
    );
    expect(good.map((c) => c.status)).toEqual(['pass']);
  });

  /** Fake cvmfs_config / cvmfs_talk in a directory used as PATH. */
  function fakeClient(o: { talk?: string; config?: string } = {}) {
    const dir = fresh();
    const bin = path.join(dir, 'bin');
    const cache = path.join(dir, 'cache');
    mkdirSync(bin);
    mkdirSync(path.join(cache, 'shared'), { recursive: true });
    const script = (name: string, body: string) => {
      writeFileSync(path.join(bin, name), `#!/bin/sh\n${body}\n`);
      chmodSync(path.join(bin, name), 0o755);
    };
    script(
      'cvmfs_config',
      o.config ??
        `[ "$1" = showconfig ] || exit 2
echo "CVMFS_REPOSITORY_NAME=$2"
echo "CVMFS_CACHE_BASE=${cache}    # from /etc/cvmfs/default.local"
echo "CVMFS_SHARED_CACHE=yes    # from /etc/cvmfs/default.conf"
echo "CVMFS_CLAIM_OWNERSHIP=no    # from /etc/cvmfs/default.local"
echo "CVMFS_HTTP_PROXY=DIRECT    # from /etc/cvmfs/default.local"
echo "CVMFS_QUOTA_LIMIT=20000    # from /etc/cvmfs/default.local"
echo "CVMFS_SERVER_URL='http://s1/cvmfs/$2'    # from /etc/cvmfs/domain.d/cern.ch.conf"`,
    );
    script(
      'cvmfs_talk',
      o.talk ??
        `case "$3 $4" in
"revision ") echo 42 ;;
"host info") printf '  [0] http://s1/cvmfs/%s (geographically ordered)\\nActive host 0: http://s1/cvmfs/%s\\n' "$2" "$2" ;;
"proxy info") printf 'Load-balance groups:\\n[0] DIRECT\\nActive proxy: [0] DIRECT\\n' ;;
*) echo "unknown command $*" >&2; exit 1 ;;
esac`,
    );
    const env = { ...process.env, PATH: `${bin}:/usr/bin:/bin` };
    const opts = {
      host: systemHost,
      probe: new CvmfsProbe({ host: systemHost, log: silentLogger(), timeoutMs: 1000 }),
      cvmfsRoot: path.join(dir, 'cvmfs'),
      repositories: ['unpacked.cern.ch', 'cms.cern.ch'],
      stateRoots: [],
      timeoutMs: 1000,
      env,
    };
    return { dir, bin, cache, env, opts, socket: (repo: string) => writeFileSync(path.join(cache, 'shared', `cvmfs_io.${repo}`), '') };
  }

  it('runs the real programs found on PATH: showconfig per repository, cvmfs_talk where a client runs', async () => {
    const f = fakeClient();
    f.socket('unpacked.cern.ch');
    const cs = await cvmfsClientChecks(f.opts);
    expect(byId(cs, 'cvmfs-config').map((c) => [c.status, c.detail.split(':')[0]])).toEqual([
      ['pass', 'unpacked.cern.ch'],
      ['pass', 'cms.cern.ch'],
    ]);
    expect(byId(cs, 'cvmfs-config')[0]!.detail).toBe(
      'unpacked.cern.ch: CVMFS_SERVER_URL=http://s1/cvmfs/unpacked.cern.ch (from /etc/cvmfs/domain.d/cern.ch.conf); CVMFS_HTTP_PROXY=DIRECT (from /etc/cvmfs/default.local); CVMFS_QUOTA_LIMIT=20000 MB (from /etc/cvmfs/default.local)',
    );
    expect(byId(cs, 'cvmfs-client')).toEqual([
      {
        id: 'cvmfs-client',
        status: 'pass',
        detail: 'unpacked.cern.ch: revision 42; Active host 0: http://s1/cvmfs/unpacked.cern.ch; Active proxy: [0] DIRECT',
      },
      { id: 'cvmfs-client', status: 'skip', detail: `cms.cern.ch: no client running (no ${f.cache}/shared/cvmfs_io.cms.cern.ch)` },
    ]);
  });

  it('no client installed: skipped; a client that fails or hangs: warned, within the timeout', async () => {
    const none = fakeClient();
    expect(await cvmfsClientChecks({ ...none.opts, env: { ...process.env, PATH: path.join(none.dir, 'empty') } })).toEqual([
      {
        id: 'cvmfs-client',
        status: 'skip',
        detail: 'cvmfs_config not found: no CVMFS client installed here (or not on PATH); its configuration is not checked',
      },
    ]);
    const bad = fakeClient({ config: 'echo "cvmfs_config: cannot read /etc/cvmfs/default.conf" >&2; exit 1', talk: 'exit 0' });
    expect(byId(await cvmfsClientChecks(bad.opts), 'cvmfs-config')[0]).toMatchObject({
      status: 'warn',
      detail: 'cvmfs_config showconfig unpacked.cern.ch failed (exit 1): cvmfs_config: cannot read /etc/cvmfs/default.conf',
    });
    const hung = fakeClient({ talk: 'exec sleep 30' });
    hung.socket('unpacked.cern.ch');
    const t0 = Date.now();
    const cs = await cvmfsClientChecks({ ...hung.opts, repositories: ['unpacked.cern.ch'] });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(byId(cs, 'cvmfs-client')[0]).toMatchObject({
      status: 'warn',
      detail: expect.stringContaining('the client does not answer on'),
      fix: expect.stringContaining('cvmfs_config probe unpacked.cern.ch'),
    });
  });
});

describe('dead and stalled CVMFS mounts and the containers on them (recording host)', () => {
  it('tells CVMFS mounts: mount.cvmfs ones (cvmfs2), a Stratum-0 spool mount (named by its repository), stand-ins under the CVMFS root; not other FUSE mounts', () => {
    const m = (mountPoint: string, fsType: string, source: string) => ({ mountPoint, root: '/', fsType, source, options: 'ro' });
    expect(isCvmfsMount(m('/cvmfs/atlas.cern.ch', 'fuse', 'cvmfs2'), '/cvmfs')).toBe(true);
    expect(isCvmfsMount(m('/var/lib/kubelet/pods/x/volumes/cms', 'fuse', 'cvmfs2'), '/cvmfs')).toBe(true);
    expect(isCvmfsMount(m('/var/spool/cvmfs/test.example.org/rdonly', 'fuse', 'test.example.org'), '/cvmfs')).toBe(true);
    expect(isCvmfsMount(m('/cvmfs/unpacked.cern.ch', 'fuse.fuse-overlayfs', 'fuse-overlayfs'), '/cvmfs')).toBe(true);
    expect(isCvmfsMount(m('/home/u/.cache/doc', 'fuse.portal', 'portal'), '/cvmfs')).toBe(false);
    expect(isCvmfsMount(m('/cvmfs/unpacked.cern.ch', 'overlay', 'overlay'), '/cvmfs')).toBe(false);
  });

  it('a dead client mount fails with the fix; containers on it are named; a stalled one fails within the deadline', async () => {
    const dir = fresh();
    const cvmfsRoot = path.join(dir, 'cvmfs');
    const repo = path.join(cvmfsRoot, 'unpacked.cern.ch');
    const l = addLayer(repo, 'x', { f: 'x' });
    const root = path.join(dir, 'state');
    mkdirSync(path.join(root, 'l'), { recursive: true });
    const { symlinkSync } = await import('node:fs');
    symlinkSync(l.dir, path.join(root, 'l', '1'));
    const host = new RecordingHost();
    const rootfs = path.join(dir, 'run', 'ctr', 'rootfs');
    mkdirSync(rootfs, { recursive: true });
    host.mounts.push(
      { mountPoint: repo, root: '/', fsType: 'fuse', source: 'cvmfs2', options: 'ro', readonly: true, propagation: 'shared', superOptions: 'ro,user_id=0' },
      {
        mountPoint: rootfs,
        root: '/',
        fsType: 'overlay',
        source: 'overlay',
        options: 'rw',
        readonly: false,
        propagation: 'private',
        superOptions: `rw,lowerdir=${root}/l/1,upperdir=${root}/snapshots/3,workdir=${root}/work/3`,
      },
    );
    const opts = {
      host,
      probe: new CvmfsProbe({ host, log: silentLogger(), timeoutMs: 300 }),
      cvmfsRoot,
      repositories: [],
      stateRoots: [root],
      timeoutMs: 300,
    };
    expect((await cvmfsMountChecks(opts)).map((c) => [c.id, c.status])).toEqual([
      ['cvmfs-mounts', 'pass'],
      ['container-mounts', 'pass'],
    ]);
    host.broken.add(repo);
    const dead = await cvmfsMountChecks(opts);
    expect(dead).toEqual([
      {
        id: 'cvmfs-mounts',
        status: 'fail',
        detail: `${repo} answers ENOTCONN (Transport endpoint is not connected: its CVMFS client died)`,
        fix: expect.stringContaining(`umount -l ${repo}`),
      },
      {
        id: 'container-mounts',
        status: 'fail',
        detail: `1 running container(s) have a lower layer on a dead CVMFS mount (ENOTCONN; their files there are gone for good): ${rootfs} (upper ${root}/snapshots/3)`,
        fix: expect.stringContaining('restart those containers'),
      },
    ]);
    host.broken.clear();
    host.stalled.add(repo);
    const t0 = Date.now();
    const stalled = await cvmfsMountChecks({ ...opts, probe: new CvmfsProbe({ host, log: silentLogger(), timeoutMs: 300 }) });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(stalled.map((c) => [c.id, c.status])).toEqual([
      ['cvmfs-mounts', 'fail'],
      ['container-mounts', 'warn'],
    ]);
    host.unstall();
  });
});

describe.skipIf(needs({ root: true, binaries: ['fuse-overlayfs'] }))('doctor over a real FUSE client killed and stopped under a running container', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  async function node() {
    const dir = fresh();
    const tree = path.join(dir, 'tree');
    const cvmfsRoot = path.join(dir, 'cvmfs');
    const mp = path.join(cvmfsRoot, 'unpacked.cern.ch');
    mkdirSync(mp, { recursive: true });
    const layer = addLayer(tree, 'x', { 'etc/hello': 'hello\n' }, { converter: true });
    const fuse = await FuseStandin.mount(tree, mp);
    cleanups.push(() => fuse.cleanup());
    const root = path.join(dir, 'sn');
    const sn = await Snapshotter.open({
      root,
      location: cvmfsLocation({ cvmfsRoot }),
      host: systemHost,
      log: silentLogger(),
      checkIntervalMs: 0,
      cvmfsTimeoutMs: 1000,
    });
    cleanups.push(() => sn.close());
    const [m0] = await sn.prepare('extract', '', {});
    writeFileSync(path.join(m0!.source, 'thin.json'), thinJson('unpacked.cern.ch', [layer]));
    await sn.commit('img', 'extract', {});
    const rootfs = path.join(dir, 'run', 'ctr1', 'rootfs');
    mkdirSync(rootfs, { recursive: true });
    mountAll(await sn.prepare('ctr1', 'img', {}), rootfs);
    cleanups.push(() => unmountAll(rootfs));
    const prefix = path.join(dir, 'etc-prefix');
    mkdirSync(prefix);
    return { dir, cvmfsRoot, mp, root, fuse, rootfs, prefix };
  }

  const doctor = (x: Awaited<ReturnType<typeof node>>) =>
    runDoctor({
      host: systemHost,
      containerdConfig: path.join(x.prefix, 'containerd.toml'),
      daemonJson: path.join(x.prefix, 'daemon.json'),
      snapshotterConfig: path.join(x.prefix, 'sn.toml'),
      graphdriverConfig: path.join(x.prefix, 'gd.toml'),
      volumePluginConfig: path.join(x.prefix, 'vp.toml'),
      systemdDir: path.join(x.prefix, 'systemd'),
      cvmfsRoot: x.cvmfsRoot,
      snapshotterRoot: x.root,
      timeoutMs: 1000,
      env: { PATH: path.join(x.prefix, 'no-client') },
    });

  it('a killed client: the mount answering ENOTCONN and the container on it fail, naming them', async () => {
    const x = await node();
    let cs = await doctor(x);
    expect(byId(cs, 'cvmfs-mounts').map((c) => c.status)).toEqual(['pass']);
    expect(byId(cs, 'container-mounts')).toEqual([{ id: 'container-mounts', status: 'pass', detail: '1 running container(s) on CVMFS layers, all answering' }]);
    await x.fuse.kill9();
    cs = await doctor(x);
    expect(byId(cs, 'repository')[0]).toMatchObject({ status: 'fail', detail: `unpacked.cern.ch: ${x.mp} answers ENOTCONN (its CVMFS client died)` });
    expect(byId(cs, 'cvmfs-mounts')[0]).toMatchObject({ status: 'fail', detail: expect.stringContaining(`${x.mp} answers ENOTCONN`) });
    expect(byId(cs, 'container-mounts')[0]).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining(`${x.rootfs} (upper ${x.root}/snapshots/`),
      fix: expect.stringContaining('restart those containers'),
    });
    expect(byId(cs, 'cvmfs-client')[0]).toMatchObject({ status: 'skip' });
  });

  it('a stopped client: the CLI says so within its --timeout and exits (a probe stuck in FUSE does not hold it)', async () => {
    const x = await node();
    x.fuse.stop();
    const t0 = Date.now();
    const r = await runCli(
      ['doctor', '--json', '--root-prefix', x.prefix, '--cvmfs-root', x.cvmfsRoot, '--snapshotter-root', x.root, '--timeout', '1'],
      30_000,
    );
    const ms = Date.now() - t0;
    const rep = JSON.parse(r.out) as { ok: boolean; checks: Check[] };
    expect(r.code).toBe(1);
    expect(ms).toBeLessThan(8000);
    expect(byId(rep.checks, 'repository')[0]!.detail).toContain('no answer within 1 s (the CVMFS client stalls)');
    expect(byId(rep.checks, 'cvmfs-mounts')[0]).toMatchObject({ status: 'fail', detail: expect.stringContaining('does not answer within 1 s') });
    expect(byId(rep.checks, 'container-mounts')[0]).toMatchObject({ status: 'warn', detail: expect.stringContaining(x.rootfs) });
  });
});
