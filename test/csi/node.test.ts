/**
 * The CSI plugin's semantics over its real gRPC socket, unprivileged: the
 * server runs in-process on a RecordingHost (simulated mount table), the
 * client replays kubelet (test/csi/kubelet.ts).
 */
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { type ServiceError, status } from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MS_REC, MS_SHARED } from '../../src/core/host/sys.js';
import { VERSION } from '../../src/csi/service.js';
import { type RunningCsi, startCsi } from '../../src/csi/server.js';
import { NodeServiceCapability_RPC_Type as Rpc, VolumeUsage_Unit as Unit } from '../../src/csi/proto/csi/v1/csi.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { code, CsiClient, KubeletPaths, message, Mode, mountCap, mountInline, mountPv, podContext, register } from './kubelet.js';

const dir = tempDir('cvmfs-thin-csi-node-');
const cvmfs = path.join(dir, 'cvmfs');
const state = path.join(dir, 'state');
const socket = path.join(dir, 'csi.sock');
const k = new KubeletPaths(path.join(dir, 'kubelet'));
const host = new RecordingHost();
let logs = '';
let csi: RunningCsi;
let c: CsiClient;

for (const repo of ['atlas.cern.ch', 'cms.cern.ch', 'sft.cern.ch']) {
  mkdirSync(path.join(cvmfs, repo), { recursive: true });
  writeFileSync(path.join(cvmfs, repo, 'README'), repo);
}
mkdirSync(path.join(cvmfs, 'evil.example.org'), { recursive: true });

const backendMounts = () => host.mounts.filter((m) => m.mountPoint.startsWith(`${state}/mounts/`)).length;
const mountedAt = (p: string) => host.mounts.filter((m) => m.mountPoint === p).length;

beforeAll(async () => {
  const log = pino({ level: 'debug' }, { write: (s: string) => void (logs += s) });
  csi = await startCsi({
    endpoint: `unix://${socket}`,
    driverName: 'cvmfs.csi.cern.ch',
    nodeId: 'node-a',
    stateDir: state,
    cvmfsRoot: cvmfs,
    allow: ['*.cern.ch'],
    backend: 'host',
    checkIntervalMs: 0,
    host,
    log,
  });
  c = new CsiClient(socket);
});

afterAll(async () => {
  c?.close();
  await csi?.stop();
});

describe('registration and identity', () => {
  it('answers the registrar and kubelet: plugin name, version, node id', async () => {
    expect(await register(c)).toEqual({ name: 'cvmfs.csi.cern.ch', nodeId: 'node-a' });
    expect((await c.pluginInfo()).vendorVersion).toBe(VERSION);
    const info = await c.nodeInfo();
    expect(info.maxVolumesPerNode).toBe(0);
    expect(info.accessibleTopology).toBeUndefined();
  });

  it('is node-only (no CONTROLLER_SERVICE) and ready', async () => {
    expect((await c.pluginCapabilities()).capabilities).toEqual([]);
    expect((await c.probe()).ready).toBe(true);
  });

  it('advertises stage/unstage, volume stats and volume condition', async () => {
    const caps = (await c.nodeCapabilities()).capabilities.map((x) => x.rpc?.type);
    expect(caps.sort()).toEqual([Rpc.STAGE_UNSTAGE_VOLUME, Rpc.GET_VOLUME_STATS, Rpc.VOLUME_CONDITION].sort());
  });

  it('refuses NodeExpandVolume with UNIMPLEMENTED', async () => {
    expect(await code(c.expand('v', '/x'))).toBe(status.UNIMPLEMENTED);
    const e = (await c.expand('v', '/x').catch((x: unknown) => x)) as ServiceError;
    expect(e.metadata.get('cvmfs-thin-code')).toEqual(['CVMFS_THIN_UNKNOWN_METHOD']);
  });
});

describe('kubelet lifecycle of a persistent volume', () => {
  const pv = { handle: 'pv-atlas', attrs: { repository: 'atlas.cern.ch' } };

  it('stages once, publishes idempotently, refuses other arguments on the same target, and tears down', async () => {
    const { staging, target } = await mountPv(c, k, pv, { name: 'p1', uid: 'uid-1' });
    expect(backendMounts()).toBe(1);
    expect(mountedAt(staging)).toBe(1);
    expect(mountedAt(target)).toBe(1);
    expect(host.mountedAt(target)!.readonly).toBe(true);
    expect(host.mountedAt(target)!.from).toBe(staging);

    // the same call again (kubelet retries): OK, nothing mounted twice
    const again = {
      volumeId: pv.handle,
      stagingTargetPath: staging,
      targetPath: target,
      volumeCapability: mountCap(),
      readonly: false,
      volumeContext: podContext(pv.attrs, { name: 'p1', uid: 'uid-1', ephemeral: false }),
    };
    expect(await code(c.publish(again))).toBe(status.OK);
    expect(await code(c.stage({ volumeId: pv.handle, stagingTargetPath: staging, volumeCapability: mountCap(), volumeContext: pv.attrs }))).toBe(status.OK);
    expect(mountedAt(target)).toBe(1);
    expect(mountedAt(staging)).toBe(1);

    // same target, other arguments: ALREADY_EXISTS, and the existing mount is untouched
    expect(await code(c.publish({ ...again, readonly: true }))).toBe(status.ALREADY_EXISTS);
    expect(await code(c.publish({ ...again, volumeCapability: mountCap(Mode.SINGLE_NODE_READER_ONLY) }))).toBe(status.ALREADY_EXISTS);
    expect(await code(c.publish({ ...again, volumeId: 'pv-cms', stagingTargetPath: '', volumeContext: { repository: 'cms.cern.ch' } }))).toBe(
      status.ALREADY_EXISTS,
    );
    expect(
      await code(c.stage({ volumeId: 'pv-other', stagingTargetPath: staging, volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } })),
    ).toBe(status.ALREADY_EXISTS);
    expect(
      await code(
        c.stage({ volumeId: pv.handle, stagingTargetPath: staging, volumeCapability: mountCap(Mode.SINGLE_NODE_READER_ONLY), volumeContext: pv.attrs }),
      ),
    ).toBe(status.ALREADY_EXISTS);
    expect(mountedAt(target)).toBe(1);
    expect(host.mountedAt(target)!.from).toBe(staging);

    // a second pod on the node: its own target, same staging, same backend mount
    const t2 = k.target('uid-2', pv.handle);
    await c.publish({ ...again, targetPath: t2, volumeContext: podContext(pv.attrs, { name: 'p2', uid: 'uid-2', ephemeral: false }) });
    expect(backendMounts()).toBe(1);

    for (const t of [target, t2]) {
      expect(await code(c.unpublish(pv.handle, t))).toBe(status.OK);
      expect(await code(c.unpublish(pv.handle, t))).toBe(status.OK);
      expect(mountedAt(t)).toBe(0);
    }
    expect(await code(c.unpublish(pv.handle, k.target('uid-never', pv.handle)))).toBe(status.OK);
    expect(await code(c.unstage(pv.handle, staging))).toBe(status.OK);
    expect(await code(c.unstage(pv.handle, staging))).toBe(status.OK);
    expect(mountedAt(staging)).toBe(0);
    expect(backendMounts()).toBe(0);
    expect(csi.manager.list()).toEqual([]);
  });

  it('refuses to publish from a staging path that is not staged, or staged for another volume or other attributes', async () => {
    const target = k.target('uid-3', 'pv-x');
    const base = { volumeId: 'pv-x', targetPath: target, volumeCapability: mountCap(), readonly: false, volumeContext: { repository: 'cms.cern.ch' } };
    const notStaged = k.staging('pv-x');
    expect(await code(c.publish({ ...base, stagingTargetPath: notStaged }))).toBe(status.FAILED_PRECONDITION);
    expect(await message(c.publish({ ...base, stagingTargetPath: notStaged }))).toMatch(/not staged/);
    await c.stage({ volumeId: 'pv-y', stagingTargetPath: k.staging('pv-y'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } });
    expect(await code(c.publish({ ...base, stagingTargetPath: k.staging('pv-y') }))).toBe(status.FAILED_PRECONDITION);
    expect(await code(c.publish({ ...base, volumeId: 'pv-y', stagingTargetPath: k.staging('pv-y'), volumeContext: { repository: 'sft.cern.ch' } }))).toBe(
      status.FAILED_PRECONDITION,
    );
    expect(mountedAt(target)).toBe(0);
    await c.unstage('pv-y', k.staging('pv-y'));
    expect(backendMounts()).toBe(0);
  });

  it('answers NOT_FOUND when unpublish/unstage name another volume than the one at the path, and leaves it mounted', async () => {
    const { staging, target } = await mountPv(c, k, { handle: 'pv-sft', attrs: { repository: 'sft.cern.ch' } }, { name: 'p4', uid: 'uid-4' });
    expect(await code(c.unpublish('pv-wrong', target))).toBe(status.NOT_FOUND);
    expect(await code(c.unstage('pv-wrong', staging))).toBe(status.NOT_FOUND);
    expect(await code(c.unstage('pv-sft', target))).toBe(status.NOT_FOUND);
    expect(await code(c.unpublish('pv-sft', staging))).toBe(status.NOT_FOUND);
    expect(mountedAt(target)).toBe(1);
    await c.unpublish('pv-sft', target);
    await c.unstage('pv-sft', staging);
    expect(backendMounts()).toBe(0);
  });

  it('publishes the whole /cvmfs tree (no repository) as a recursive bind with slave propagation', async () => {
    // systemd's /cvmfs automount, shared: a slave of it receives the repositories mounted later
    host.mount('systemd-1', cvmfs, 'autofs', 0, null);
    host.mount('', cvmfs, null, MS_SHARED, null);
    const { staging, target } = await mountPv(c, k, { handle: 'pv-all', attrs: {} }, { name: 'p5', uid: 'uid-5' });
    for (const p of [staging, target]) {
      const m = host.mountedAt(p)!;
      expect(m.propagation).toBe('slave');
      expect(m.readonly).toBe(true);
      const bind = host.ops('mount').find((x) => x.args[1] === p)!;
      expect((bind.args[3] as number) & MS_REC).toBe(MS_REC);
    }
    expect(host.mountedAt(staging)!.from).toBe(cvmfs);
    expect(backendMounts()).toBe(0);
    await c.unpublish('pv-all', target);
    await c.unstage('pv-all', staging);
    expect(mountedAt(target) + mountedAt(staging)).toBe(0);
    host.umount(cvmfs);
  });

  it('kubelet retries racing: 10 identical publishes of one target at once all succeed, one bind', async () => {
    const target = k.target('uid-race', 'pv-race');
    const req = {
      volumeId: 'pv-race',
      targetPath: target,
      volumeCapability: mountCap(),
      stagingTargetPath: '',
      volumeContext: podContext({ repository: 'cms.cern.ch' }, { name: 'r', uid: 'uid-race', ephemeral: false }),
    };
    const codes = await Promise.all(Array.from({ length: 10 }, () => code(c.publish(req))));
    expect(codes).toEqual(Array(10).fill(status.OK));
    expect(mountedAt(target)).toBe(1);
    expect(backendMounts()).toBe(1);
    const down = await Promise.all(Array.from({ length: 10 }, () => code(c.unpublish('pv-race', target))));
    expect(down).toEqual(Array(10).fill(status.OK));
    expect(mountedAt(target)).toBe(0);
    expect(backendMounts()).toBe(0);
  });

  it('50 concurrent publishes of one repository: all succeed, one backend mount', async () => {
    const targets = Array.from({ length: 50 }, (_, i) => k.target(`uid-c${i}`, 'pv-conc'));
    const attrs = { repository: 'atlas.cern.ch' };
    const codes = await Promise.all(
      targets.map((t) =>
        code(
          c.publish({
            volumeId: 'pv-conc',
            targetPath: t,
            volumeCapability: mountCap(),
            volumeContext: podContext(attrs, { name: 'x', uid: 'u', ephemeral: false }),
            stagingTargetPath: '',
          }),
        ),
      ),
    );
    expect(codes.every((x) => x === 0)).toBe(true);
    expect(backendMounts()).toBe(1);
    expect(targets.every((t) => mountedAt(t) === 1)).toBe(true);
    await Promise.all(targets.map((t) => c.unpublish('pv-conc', t)));
    expect(backendMounts()).toBe(0);
  });
});

describe('inline ephemeral volumes', () => {
  it('accepts the SINGLE_NODE_WRITER kubelet sends for inline volumes, mounting read-only', async () => {
    const { volumeId, target } = await mountInline(c, k, { repository: 'cms.cern.ch' }, { name: 'e1', uid: 'uid-e1' });
    expect(host.mountedAt(target)!.readonly).toBe(true);
    await c.unpublish(volumeId, target);
    expect(mountedAt(target)).toBe(0);
  });

  it('refuses clientConfig from pod authors (inline), naming it', async () => {
    const p = mountInline(c, k, { repository: 'cms.cern.ch', clientConfig: 'CVMFS_HTTP_PROXY=http://proxy:3128' }, { name: 'e2', uid: 'uid-e2' });
    expect(await code(p)).toBe(status.INVALID_ARGUMENT);
    expect(await message(mountInline(c, k, { repository: 'cms.cern.ch', clientConfig: 'x' }, { name: 'e2', uid: 'uid-e2' }))).toMatch(
      /clientConfig.*inline ephemeral/,
    );
  });

  it('treats a publish without staging path and without the ephemeral flag as inline', async () => {
    const target = k.target('uid-e3', 'v');
    const req = { volumeId: 'e3', targetPath: target, volumeCapability: mountCap(Mode.SINGLE_NODE_WRITER), volumeContext: { repository: 'cms.cern.ch' } };
    expect(await code(c.publish({ ...req, volumeContext: { ...req.volumeContext, clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' } }))).toBe(status.INVALID_ARGUMENT);
    expect(await code(c.publish(req))).toBe(status.OK);
    await c.unpublish('e3', target);
  });

  it('still refuses multi-node writer modes for inline volumes (FAILED_PRECONDITION: a capability the volume does not have)', async () => {
    const target = k.target('uid-e4', 'v');
    expect(
      await code(
        c.publish({
          volumeId: 'e4',
          targetPath: target,
          volumeCapability: mountCap(Mode.MULTI_NODE_MULTI_WRITER),
          volumeContext: podContext({ repository: 'cms.cern.ch' }, { name: 'e4', uid: 'uid-e4', ephemeral: true }),
        }),
      ),
    ).toBe(status.FAILED_PRECONDITION);
  });
});

describe("the spec's error tables: INVALID_ARGUMENT for malformed requests, FAILED_PRECONDITION for capabilities CVMFS does not have", () => {
  const cap = mountCap();
  const ctx = { repository: 'atlas.cern.ch' };
  const target = () => k.target('uid-bad', 'v');
  const staging = () => k.staging('bad');
  const fileTarget = () => {
    const t = k.target('uid-file', 'v');
    writeFileSync(t, '');
    return t;
  };
  const linkTarget = () => {
    const t = k.target('uid-link', 'v');
    if (!existsSync(t)) symlinkSync(dir, t);
    return t;
  };
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ['stage without volume_id', () => c.stage({ stagingTargetPath: staging(), volumeCapability: cap, volumeContext: ctx }), /volume_id is required/],
    ['stage without staging_target_path', () => c.stage({ volumeId: 'v', volumeCapability: cap, volumeContext: ctx }), /staging_target_path is required/],
    ['stage without volume_capability', () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeContext: ctx }), /volume_capability is required/],
    ['unstage without volume_id', () => c.unstage('', staging()), /volume_id is required/],
    ['unstage without staging_target_path', () => c.unstage('v', ''), /staging_target_path is required/],
    ['publish without volume_id', () => c.publish({ targetPath: target(), volumeCapability: cap, volumeContext: ctx }), /volume_id is required/],
    ['publish without target_path', () => c.publish({ volumeId: 'v', volumeCapability: cap, volumeContext: ctx }), /target_path is required/],
    ['publish without volume_capability', () => c.publish({ volumeId: 'v', targetPath: target(), volumeContext: ctx }), /volume_capability is required/],
    [
      'publish with a relative target_path',
      () => c.publish({ volumeId: 'v', targetPath: 'pods/x/mount', volumeCapability: cap, volumeContext: ctx }),
      /must be an absolute path/,
    ],
    ['publish on /', () => c.publish({ volumeId: 'v', targetPath: '/', volumeCapability: cap, volumeContext: ctx }), /root directory/],
    [
      'publish without access type',
      () => c.publish({ volumeId: 'v', targetPath: target(), volumeCapability: { accessMode: { mode: Mode.MULTI_NODE_READER_ONLY } }, volumeContext: ctx }),
      /access type is required/,
    ],
    [
      'publish without access mode',
      () =>
        c.publish({
          volumeId: 'v',
          targetPath: target(),
          volumeCapability: { mount: { fsType: '', mountFlags: [], volumeMountGroup: '' }, accessMode: undefined },
          volumeContext: ctx,
        }),
      /access_mode is required/,
    ],
    [
      'an unknown attribute',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { ...ctx, proxy: 'http://x', Repository: 'a' } }),
      /unknown volume attribute\(s\) "Repository", "proxy"/,
    ],
    [
      "cvmfs-csi's clientConfigFilepath",
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { ...ctx, clientConfigFilepath: '/etc/x' } }),
      /clientConfigFilepath is not supported/,
    ],
    [
      'a repository that is not a repository name',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { repository: '../../etc' } }),
      /not a fully qualified CVMFS repository name/,
    ],
    [
      'a repository outside the allowlist',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { repository: 'evil.example.org' } }),
      /not allowed on this node/,
    ],
    [
      'a malformed root hash',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { ...ctx, hash: 'xyz' } }),
      /root hash/,
    ],
    [
      'a client setting that may not be set per volume',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { ...ctx, clientConfig: 'CVMFS_CACHE_BASE=/tmp' } }),
      /CVMFS_CACHE_BASE.*may not be set per volume/,
    ],
    [
      'a tag on the whole tree',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: cap, volumeContext: { tag: 'prod' } }),
      /need a repository/,
    ],
    [
      'a bad ephemeral flag',
      () => c.publish({ volumeId: 'v', targetPath: target(), volumeCapability: cap, volumeContext: { ...ctx, 'csi.storage.k8s.io/ephemeral': 'yes' } }),
      /must be "true" or "false"/,
    ],
    [
      'publish on a target that is a file',
      () => c.publish({ volumeId: 'v', targetPath: fileTarget(), volumeCapability: cap, volumeContext: ctx }),
      /exists and is not a directory/,
    ],
    [
      'publish on a target that is a symlink to elsewhere',
      () => c.publish({ volumeId: 'v', targetPath: linkTarget(), volumeCapability: cap, volumeContext: ctx }),
      /exists and is not a directory/,
    ],
    [
      "publish into the plugin's state directory",
      () => c.publish({ volumeId: 'v', targetPath: path.join(state, 'mounts/x'), volumeCapability: cap, volumeContext: ctx }),
      /not allowed/,
    ],
    [
      'a volume_id of 5000 characters',
      () => c.publish({ volumeId: 'v'.repeat(5000), targetPath: target(), volumeCapability: cap, volumeContext: ctx }),
      /volume_id is longer than 4096/,
    ],
    ['stats without volume_id', () => c.stats('', target()), /volume_id is required/],
    ['stats without volume_id, with a relative path (csi-sanity)', () => c.stats('', 'some/path'), /volume_id is required/],
    ['stats without volume_path', () => c.stats('v', ''), /volume_path is required/],
  ];
  it.each(cases)('%s → INVALID_ARGUMENT naming the problem', async (_name, run, why) => {
    let err: { code?: number; details?: string } = {};
    await run().catch((e: { code?: number; details?: string }) => (err = e));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(why);
  });
  // the spec's NodeStageVolume/NodePublishVolume tables: "Exceeds capabilities" (capabilities
  // not supported by the volume) is FAILED_PRECONDITION, not INVALID_ARGUMENT
  const unsupported: [string, () => Promise<unknown>, RegExp][] = [
    [
      'publish of a block volume',
      () =>
        c.publish({
          volumeId: 'v',
          targetPath: target(),
          volumeCapability: { block: {}, accessMode: { mode: Mode.MULTI_NODE_READER_ONLY } },
          volumeContext: ctx,
        }),
      /block access is not supported/,
    ],
    [
      'publish of a persistent SINGLE_NODE_WRITER volume',
      () =>
        c.publish({
          volumeId: 'v',
          targetPath: target(),
          stagingTargetPath: staging(),
          volumeCapability: mountCap(Mode.SINGLE_NODE_WRITER),
          volumeContext: ctx,
        }),
      /SINGLE_NODE_WRITER is not supported/,
    ],
    [
      'stage of a MULTI_NODE_MULTI_WRITER volume',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: mountCap(Mode.MULTI_NODE_MULTI_WRITER), volumeContext: ctx }),
      /MULTI_NODE_MULTI_WRITER is not supported/,
    ],
    [
      'stage of a MULTI_NODE_SINGLE_WRITER volume',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: mountCap(Mode.MULTI_NODE_SINGLE_WRITER), volumeContext: ctx }),
      /MULTI_NODE_SINGLE_WRITER is not supported/,
    ],
    [
      'stage with mount flag rw',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: mountCap(Mode.MULTI_NODE_READER_ONLY, ['ro', 'rw']), volumeContext: ctx }),
      /mount_flags "rw" not supported/,
    ],
    [
      'stage with a volume_mount_group',
      () =>
        c.stage({
          volumeId: 'v',
          stagingTargetPath: staging(),
          volumeCapability: { mount: { fsType: '', mountFlags: [], volumeMountGroup: '1000' }, accessMode: { mode: Mode.MULTI_NODE_READER_ONLY } },
          volumeContext: ctx,
        }),
      /volume_mount_group/,
    ],
    [
      'stage of a persistent SINGLE_NODE_WRITER volume (what csi-sanity asks)',
      () => c.stage({ volumeId: 'v', stagingTargetPath: staging(), volumeCapability: mountCap(Mode.SINGLE_NODE_WRITER), volumeContext: ctx }),
      /SINGLE_NODE_WRITER is not supported.*read-only/,
    ],
    [
      'stage of a block volume',
      () =>
        c.stage({
          volumeId: 'v',
          stagingTargetPath: staging(),
          volumeCapability: { block: {}, accessMode: { mode: Mode.MULTI_NODE_READER_ONLY } },
          volumeContext: ctx,
        }),
      /block access is not supported/,
    ],
    [
      'publish with mount flag exec',
      () => c.publish({ volumeId: 'v', targetPath: target(), volumeCapability: mountCap(Mode.MULTI_NODE_READER_ONLY, ['exec']), volumeContext: ctx }),
      /mount_flags "exec" not supported/,
    ],
  ];
  it.each(unsupported)('%s → FAILED_PRECONDITION naming the problem', async (_name, run, why) => {
    let err: { code?: number; details?: string } = {};
    await run().catch((e: { code?: number; details?: string }) => (err = e));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.details).toMatch(why);
  });
  it('left nothing mounted', () => {
    expect(host.mounts).toEqual([]);
  });
});

describe('NodeGetVolumeStats and the volume condition', () => {
  it('NOT_FOUND for a path where the volume is not published', async () => {
    expect(await code(c.stats('pv-none', k.target('uid-none', 'v')))).toBe(status.NOT_FOUND);
  });

  it('NOT_FOUND for an unknown volume before judging the form of the path (csi-sanity sends "some/path"), naming the path', async () => {
    for (const p of ['some/path', '/', '/a/\0b', `/${'x'.repeat(5000)}`]) {
      let err: { code?: number; details?: string } = {};
      await c.stats('pv-unknown', p).catch((e: { code?: number; details?: string }) => (err = e));
      expect(err.code, p.slice(0, 20)).toBe(status.NOT_FOUND);
      expect(err.details).toContain('pv-unknown');
    }
    expect(await message(c.stats('pv-unknown', 'some/path'))).toMatch(
      /not published or staged at "some\/path": volume_path "some\/path" must be an absolute path/,
    );
  });

  it('NOT_FOUND for a published volume asked about at a relative path', async () => {
    const { staging, target } = await mountPv(c, k, { handle: 'pv-rel', attrs: { repository: 'atlas.cern.ch' } }, { name: 'r', uid: 'uid-rel' });
    expect(await code(c.stats('pv-rel', 'some/path'))).toBe(status.NOT_FOUND);
    expect(await code(c.stats('pv-rel', path.relative('/', target)))).toBe(status.NOT_FOUND);
    expect(await code(c.stats('pv-rel', target))).toBe(status.OK);
    await c.unpublish('pv-rel', target);
    await c.unstage('pv-rel', staging);
  });

  it('reports usage and a normal condition; abnormal when the FUSE client died or the mount vanished', async () => {
    const { staging, target } = await mountPv(c, k, { handle: 'pv-st', attrs: { repository: 'atlas.cern.ch' } }, { name: 's', uid: 'uid-s' });
    expect(await code(c.stats('pv-other', target))).toBe(status.NOT_FOUND);
    const ok = await c.stats('pv-st', target);
    expect(ok.volumeCondition).toMatchObject({ abnormal: false });
    expect(ok.usage.map((u) => u.unit).sort()).toEqual([Unit.BYTES, Unit.INODES]);
    expect(ok.usage.find((u) => u.unit === Unit.BYTES)!.total).toBeGreaterThan(0);
    expect((await c.stats('pv-st', staging)).volumeCondition?.abnormal).toBe(false);

    host.broken.add(target);
    const broken = await c.stats('pv-st', target);
    expect(broken.volumeCondition?.abnormal).toBe(true);
    expect(broken.volumeCondition?.message).toMatch(/not connected/);
    host.broken.delete(target);

    host.umount(target);
    const gone = await c.stats('pv-st', target);
    expect(gone.volumeCondition).toMatchObject({ abnormal: true });
    expect(gone.volumeCondition!.message).toMatch(/not mounted/);

    // kubelet publishes again after noticing: same request, mounted again
    await c.publish({
      volumeId: 'pv-st',
      stagingTargetPath: staging,
      targetPath: target,
      volumeCapability: mountCap(),
      readonly: false,
      volumeContext: podContext({ repository: 'atlas.cern.ch' }, { name: 's', uid: 'uid-s', ephemeral: false }),
    });
    expect(mountedAt(target)).toBe(1);
    await c.unpublish('pv-st', target);
    await c.unstage('pv-st', staging);
    expect(host.mounts).toEqual([]);
  });
});

describe('failures and logs', () => {
  it('UNAVAILABLE when an allowed repository is not on the host', async () => {
    const p = c.stage({ volumeId: 'v', stagingTargetPath: k.staging('lhcb'), volumeCapability: mountCap(), volumeContext: { repository: 'lhcb.cern.ch' } });
    expect(await code(p)).toBe(status.UNAVAILABLE);
    expect(backendMounts()).toBe(0);
  });

  it('answers the CVMFS_THIN_* code in the trailing metadata and logs it at warn with the status name; the message is what kubelet shows', async () => {
    const e = (await c
      .stage({ volumeId: 'v-code', stagingTargetPath: k.staging('code'), volumeCapability: mountCap(), volumeContext: { repository: 'evil.example.org' } })
      .catch((x: unknown) => x)) as ServiceError;
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toMatch(/evil\.example\.org/);
    expect(e.metadata.get('cvmfs-thin-code')).toEqual(['CVMFS_THIN_REPOSITORY_NOT_ALLOWED']);
    const line = logs
      .trim()
      .split('\n')
      .map((x) => JSON.parse(x) as Record<string, unknown>)
      .find((x) => x['volumeId'] === 'v-code');
    expect(line).toMatchObject({
      msg: 'rpc failed',
      level: 40,
      method: 'NodeStageVolume',
      code: 'CVMFS_THIN_REPOSITORY_NOT_ALLOWED',
      status: 'INVALID_ARGUMENT',
      err: e.details,
    });
  });

  it('never logs secrets or clientConfig values', async () => {
    const target = k.target('uid-sec', 'v');
    await c
      .publish({
        volumeId: 'pv-sec',
        targetPath: target,
        volumeCapability: mountCap(),
        secrets: { token: 'S3CRET-TOKEN' },
        volumeContext: podContext(
          { repository: 'atlas.cern.ch', clientConfig: 'CVMFS_HTTP_PROXY=http://PRIVATE-PROXY:3128' },
          { name: 'x', uid: 'y', ephemeral: false },
        ),
        stagingTargetPath: '',
      })
      .catch(() => undefined);
    await c.unpublish('pv-sec', target);
    expect(logs).toContain('NodePublishVolume');
    expect(logs).not.toContain('S3CRET-TOKEN');
    expect(logs).not.toContain('PRIVATE-PROXY');
  });
});

describe('a stalled repository (the CVMFS client does not answer)', () => {
  const sdir = tempDir('cvmfs-thin-csi-stall-');
  const scvmfs = path.join(sdir, 'cvmfs');
  const ssocket = path.join(sdir, 'csi.sock');
  const sk = new KubeletPaths(path.join(sdir, 'kubelet'));
  const shost = new RecordingHost();
  const T = 400;
  let scsi: RunningCsi;
  let sc: CsiClient;

  beforeAll(async () => {
    for (const repo of ['atlas.cern.ch', 'cms.cern.ch']) mkdirSync(path.join(scvmfs, repo), { recursive: true });
    scsi = await startCsi({
      endpoint: `unix://${ssocket}`,
      driverName: 'cvmfs.csi.cern.ch',
      nodeId: 'node-s',
      stateDir: path.join(sdir, 'state'),
      cvmfsRoot: scvmfs,
      allow: ['*.cern.ch'],
      backend: 'host',
      checkIntervalMs: 0,
      cvmfsTimeoutMs: T,
      host: shost,
      log: pino({ level: 'silent' }),
    });
    sc = new CsiClient(ssocket);
  });
  afterAll(async () => {
    shost.unstall();
    sc?.close();
    await scsi?.stop();
  });

  const timed = async (p: Promise<unknown>) => {
    const t0 = Date.now();
    const [cd, msg] = await Promise.all([code(p), message(p)]);
    return { code: cd, message: msg, ms: Date.now() - t0 };
  };

  it('NodeStage and NodePublish fail with UNAVAILABLE within the deadline, naming the repository; other RPCs are answered meanwhile; stats say stalled', async () => {
    const other = await mountPv(sc, sk, { handle: 'pv-atlas', attrs: { repository: 'atlas.cern.ch' } }, { name: 'a', uid: 'uid-a' });
    const cms = await mountPv(sc, sk, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'c', uid: 'uid-c' });
    shost.stalled.add(path.join(scvmfs, 'cms.cern.ch'));
    shost.stalled.add(path.join(sdir, 'state', 'mounts', 'cms.cern.ch'));
    shost.stalled.add(cms.staging);
    shost.stalled.add(cms.target);
    const stage = timed(
      sc.stage({ volumeId: 'pv-cms2', stagingTargetPath: sk.staging('pv-cms2'), volumeCapability: mountCap(), volumeContext: { repository: 'cms.cern.ch' } }),
    );
    const inline = timed(mountInline(sc, sk, { repository: 'cms.cern.ch' }, { name: 'i', uid: 'uid-i' }));
    await new Promise((r) => setTimeout(r, 50));
    const t1 = Date.now();
    expect((await sc.nodeCapabilities()).capabilities).toHaveLength(3);
    expect((await sc.nodeInfo()).nodeId).toBe('node-s');
    expect((await sc.probe()).ready).toBe(true);
    expect(await code(sc.unpublish('pv-atlas', other.target))).toBe(status.OK);
    expect(await code(sc.unstage('pv-atlas', other.staging))).toBe(status.OK);
    expect(Date.now() - t1).toBeLessThan(T / 2);
    for (const f of await Promise.all([stage, inline])) {
      expect(f.code).toBe(status.UNAVAILABLE);
      expect(f.message).toMatch(
        /^repository cms\.cern\.ch: CVMFS at \S+ (did not answer within 0\.4 s \(cvmfs-timeout\)|has not answered for [\d.]+ s \(deadline 0\.4 s, cvmfs-timeout\)): the CVMFS client is stalled/,
      );
      expect(f.ms).toBeLessThan(T + 300);
    }
    const st = await sc.stats('pv-cms', cms.target);
    expect(st.volumeCondition).toEqual({
      abnormal: true,
      message: `${cms.target} does not answer within 0.4 s (cvmfs-timeout): the CVMFS client serving cms.cern.ch is stalled (server or proxy unreachable?)`,
    });
    // taking a stalled volume away needs no answer from it
    expect(await code(sc.unpublish('pv-cms', cms.target))).toBe(status.OK);
    expect(await code(sc.unstage('pv-cms', cms.staging))).toBe(status.OK);
    expect(shost.mounts).toEqual([]);
    shost.unstall();
    await new Promise((r) => setTimeout(r, 20));
    const back = await mountPv(sc, sk, { handle: 'pv-cms', attrs: { repository: 'cms.cern.ch' } }, { name: 'c', uid: 'uid-c' });
    expect((await sc.stats('pv-cms', back.target)).volumeCondition?.abnormal).toBe(false);
    await sc.unpublish('pv-cms', back.target);
    await sc.unstage('pv-cms', back.staging);
  });
});
