/** `cvmfs-thin csi` settings and the pure request checks (unprivileged). */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { csiCommand, resolveCsiSettings } from '../../src/cli/csi.js';
import { CSI_DEFAULTS, checkDriverName, checkNodeId, parseEndpoint, startCsi } from '../../src/csi/server.js';
import { checkCapability, isEphemeral, parseAttributes, requiredPath } from '../../src/csi/request.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { tempDir } from '../helpers/env.js';
import { Mode, mountCap } from './kubelet.js';

const dir = tempDir('cvmfs-thin-csi-settings-');

/** Parse a command line with commander as the CLI does, and resolve it. */
function settings(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const cmd = csiCommand();
  cmd.exitOverride();
  cmd.action(() => undefined);
  cmd.parse(argv, { from: 'user' });
  return resolveCsiSettings(cmd.opts(), cmd, env);
}

describe('settings: flags, then environment, then config file, then defaults', () => {
  it('defaults are cvmfs-csi compatible', () => {
    const s = settings([]);
    expect(s).toMatchObject({ endpoint: CSI_DEFAULTS.endpoint, driverName: 'cvmfs.csi.cern.ch', nodeId: os.hostname(), allowEphemeralClientConfig: false });
    expect(s.manager).toMatchObject({
      stateDir: '/var/lib/cvmfs-thin/csi',
      cvmfsRoot: '/cvmfs',
      allow: { patterns: ['*'] },
      backend: 'host',
      mountCommand: ['mount', '-t', 'cvmfs'],
      idleUnmountMs: 0,
    });
  });

  it('CSI_ENDPOINT and NODE_ID beat the config file; flags beat both', () => {
    const cfg = path.join(dir, 'a.toml');
    writeFileSync(
      cfg,
      'endpoint = "unix:///from/config.sock"\nnode-id = "cfg-node"\nallowed-repositories = ["cms.cern.ch"]\nbackend = "client"\nmount-command = "/usr/bin/mount -t cvmfs"\nallow-ephemeral-client-config = true\nidle-unmount = 60\n',
    );
    const env = { CSI_ENDPOINT: 'unix:///from/env.sock', NODE_ID: 'env-node' };
    const a = settings(['--config', cfg], env);
    expect(a).toMatchObject({ endpoint: 'unix:///from/env.sock', nodeId: 'env-node', allowEphemeralClientConfig: true });
    expect(a.manager).toMatchObject({
      allow: { patterns: ['cms.cern.ch'] },
      backend: 'client',
      mountCommand: ['/usr/bin/mount', '-t', 'cvmfs'],
      idleUnmountMs: 60_000,
    });
    expect(settings(['--config', cfg], {})).toMatchObject({ endpoint: 'unix:///from/config.sock', nodeId: 'cfg-node' });
    const b = settings(
      [
        '--config',
        cfg,
        '--endpoint',
        '/flag.sock',
        '--node-id',
        'flag-node',
        '--allowed-repository',
        'a.cern.ch',
        '*.egi.eu',
        '--backend',
        'host',
        '--mount-command',
        'mount  -t cvmfs',
      ],
      env,
    );
    expect(b).toMatchObject({ endpoint: '/flag.sock', nodeId: 'flag-node' });
    expect(b.manager).toMatchObject({ allow: { patterns: ['a.cern.ch', '*.egi.eu'] }, backend: 'host', mountCommand: ['mount', '-t', 'cvmfs'] });
  });

  it('refuses unknown config keys, bad values, and non-unix endpoints, naming them', () => {
    const cfg = path.join(dir, 'bad.toml');
    writeFileSync(cfg, 'nodeid = "x"\nbackend = "nfs"\n');
    expect(() => settings(['--config', cfg])).toThrow(/unknown key\(s\) "nodeid".*backend: must be one of host, client/);
    expect(() => settings(['--endpoint', 'tcp://127.0.0.1:10000'])).toThrow(/only unix sockets/);
    expect(() => settings(['--endpoint', 'unix://relative.sock'])).toThrow(/must be absolute/);
    expect(() => settings(['--driver-name', '-bad-'])).toThrow(/driver name "-bad-"/);
    expect(() => settings(['--node-id', 'a\tb'])).toThrow(/node id/);
    expect(() => settings(['--allowed-repository', 'Not A Repo'])).toThrow(/allowed repository/);
    expect(() => settings(['--backend', 'nfs'])).toThrow();
  });

  it('parses endpoints the way CSI supervisors write them', () => {
    expect(parseEndpoint('unix:///csi/csi.sock')).toBe('/csi/csi.sock');
    expect(parseEndpoint('unix:/csi/csi.sock')).toBe('/csi/csi.sock');
    expect(parseEndpoint('/csi//x/../csi.sock')).toBe('/csi/csi.sock');
  });

  it('checks plugin names and node ids', () => {
    expect(checkDriverName('cvmfs.csi.cern.ch')).toBe('cvmfs.csi.cern.ch');
    expect(() => checkDriverName('a'.repeat(64))).toThrow(/at most 63/);
    expect(() => checkDriverName('bad_name')).toThrow();
    expect(() => checkNodeId('')).toThrow(/node id/);
    expect(() => checkNodeId('a\nb')).toThrow(/control characters/);
    expect(checkNodeId('worker-1.example.org')).toBe('worker-1.example.org');
  });

  it('refuses to start on a socket path that is not a socket', async () => {
    const notSocket = path.join(dir, 'file');
    writeFileSync(notSocket, '');
    await expect(
      startCsi({
        endpoint: notSocket,
        driverName: 'cvmfs.csi.cern.ch',
        nodeId: 'n',
        stateDir: path.join(dir, 'state'),
        cvmfsRoot: dir,
        allow: ['*'],
        backend: 'host',
        checkIntervalMs: 0,
        log: silentLogger(),
      }),
    ).rejects.toThrow(/not a socket/);
  });
});

describe('request checks', () => {
  it('normalises paths and refuses NUL bytes', () => {
    expect(requiredPath('/a/b/../c/', 'target_path')).toBe('/a/c');
    expect(() => requiredPath('/a\0b', 'target_path')).toThrow(/NUL/);
    expect(() => requiredPath(`/${'a'.repeat(5000)}`, 'target_path')).toThrow(/longer than 4096/);
  });

  it('ephemeral: the kubelet flag decides; without it, a missing staging path means inline', () => {
    expect(isEphemeral({ 'csi.storage.k8s.io/ephemeral': 'true' }, '/staging')).toBe(true);
    expect(isEphemeral({ 'csi.storage.k8s.io/ephemeral': 'false' }, undefined)).toBe(false);
    expect(isEphemeral({}, undefined)).toBe(true);
    expect(isEphemeral({}, '/staging')).toBe(false);
  });

  it('accepts read-only modes always, writer modes only for inline volumes', () => {
    expect(checkCapability(mountCap(Mode.MULTI_NODE_READER_ONLY), false)).toBe('MULTI_NODE_READER_ONLY');
    expect(checkCapability(mountCap(Mode.SINGLE_NODE_READER_ONLY), false)).toBe('SINGLE_NODE_READER_ONLY');
    expect(checkCapability(mountCap(Mode.SINGLE_NODE_WRITER), true)).toBe('SINGLE_NODE_WRITER');
    expect(checkCapability(mountCap(Mode.SINGLE_NODE_MULTI_WRITER), true)).toBe('SINGLE_NODE_MULTI_WRITER');
    expect(() => checkCapability(mountCap(Mode.SINGLE_NODE_WRITER), false)).toThrow(/read-only/);
    expect(() => checkCapability(mountCap(Mode.MULTI_NODE_SINGLE_WRITER), true)).toThrow(/MULTI_NODE_SINGLE_WRITER/);
    expect(checkCapability(mountCap(Mode.MULTI_NODE_READER_ONLY, ['ro', 'nosuid', 'nodev'], 'ext4'), false)).toBe('MULTI_NODE_READER_ONLY');
    expect(() => checkCapability(mountCap(Mode.MULTI_NODE_READER_ONLY, ['exec', 'suid']), false)).toThrow(/"exec", "suid"/);
  });

  it('splits attributes, ignores kubelet keys, refuses unknown ones and inline clientConfig', () => {
    const ctx = { repository: 'a.cern.ch', tag: 'prod', sharedMountID: 'm1', 'csi.storage.k8s.io/pod.name': 'p', 'csi.storage.k8s.io/whatever-new': 'x' };
    expect(parseAttributes(ctx, { ephemeral: true, allowEphemeralClientConfig: false })).toEqual({ repository: 'a.cern.ch', opts: { tag: 'prod' } });
    expect(parseAttributes({}, { ephemeral: false, allowEphemeralClientConfig: false })).toEqual({ repository: undefined, opts: {} });
    expect(() => parseAttributes({ Repository: 'a.cern.ch' }, { ephemeral: false, allowEphemeralClientConfig: false })).toThrow(/"Repository"/);
    expect(() => parseAttributes({ clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' }, { ephemeral: true, allowEphemeralClientConfig: false })).toThrow(
      /not allowed in inline ephemeral/,
    );
    expect(
      parseAttributes({ repository: 'a.cern.ch', clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' }, { ephemeral: true, allowEphemeralClientConfig: true }).opts,
    ).toEqual({ clientConfig: 'CVMFS_HTTP_PROXY=DIRECT' });
  });
});
