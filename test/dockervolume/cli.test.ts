/**
 * `cvmfs-thin volume-plugin`: flags, the TOML file (kebab-case keys, unknown
 * keys refused), precedence, start-up errors and SIGTERM. No root: the plugin
 * serves on a socket in a temp dir and nothing is mounted.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { volumePluginConfigSpec } from '../../src/cli/volume-plugin.js';
import { volumeSettings } from '../../src/cli/volume-config.js';
import { tempDir } from '../helpers/env.js';
import { pluginCall } from '../graphdriver/harness.js';
import { runVolumePluginCommand, startVolumePlugin } from './harness.js';

describe('volume-plugin command (no root)', () => {
  const dir = tempDir('dv-cli-');
  const toml = (name: string, text: string) => {
    const f = path.join(dir, name);
    writeFileSync(f, text);
    return f;
  };

  it('reads every key of the TOML file (the shared volume keys plus socket and metrics-address)', () => {
    const f = toml(
      'all.toml',
      [
        'socket = "/run/docker/plugins/cvmfs.sock"',
        'state-dir = "/var/lib/x"',
        'cvmfs-root = "/cvmfs"',
        'allowed-repositories = ["*.cern.ch", "sw.example.org"]',
        'backend = "client"',
        'mount-command = "/usr/bin/mount -t cvmfs"',
        'idle-unmount = 300',
        'cvmfs-timeout = 3',
        'log-level = "debug"',
        'known-volumes = ["cms.cern.ch", "atlas.cern.ch@prod"]',
      ].join('\n'),
    );
    const s = volumeSettings({ config: f }, null, volumePluginConfigSpec, { stateDir: '/default', loggerName: 't' });
    expect(s.manager).toMatchObject({
      stateDir: '/var/lib/x',
      cvmfsRoot: '/cvmfs',
      allow: { patterns: ['*.cern.ch', 'sw.example.org'] },
      backend: 'client',
      mountCommand: ['/usr/bin/mount', '-t', 'cvmfs'],
      idleUnmountMs: 300_000,
      cvmfsTimeoutMs: 3000,
    });
    // the default: the snapshotter's cvmfs-timeout
    expect(volumeSettings({}, null, volumePluginConfigSpec, { stateDir: '/default', loggerName: 't' }).manager.cvmfsTimeoutMs).toBe(10_000);
    expect(s.pick('socket', 'socket')).toBe('/run/docker/plugins/cvmfs.sock');
    expect(s.pick('knownVolume', 'known-volumes')).toEqual(['cms.cern.ch', 'atlas.cern.ch@prod']);
    expect(Object.keys(volumePluginConfigSpec).sort()).toEqual([
      'allowed-repositories',
      'backend',
      'check-interval',
      'client-config-keys',
      'cvmfs-root',
      'cvmfs-timeout',
      'idle-unmount',
      'known-volumes',
      'log-level',
      'metrics-address',
      'mount-command',
      'mount-timeout',
      'socket',
      'state-dir',
    ]);
  });

  it('refuses unknown keys, bad values and bad TOML, naming them', () => {
    const load = (f: string) => volumeSettings({ config: f }, null, volumePluginConfigSpec, { stateDir: '/default', loggerName: 't' });
    expect(() => load(toml('u.toml', 'allow = ["cms.cern.ch"]\nmountpoint = "/cvmfs"'))).toThrow(/unknown key\(s\) "allow", "mountpoint" \(known: state-dir, /);
    expect(() => load(toml('b.toml', 'backend = "autofs"'))).toThrow(/backend: must be one of host, client/);
    expect(() => load(toml('r.toml', 'state-dir = "state"'))).toThrow(/state-dir: must be an absolute path/);
    expect(() => load(toml('i.toml', 'idle-unmount = -5'))).toThrow(/idle-unmount: must be a whole number from 0 to 86400/);
    expect(() => load(toml('c.toml', 'cvmfs-timeout = 0'))).toThrow(/cvmfs-timeout: must be a whole number from 1 to 600/);
    expect(() => load(toml('s.toml', 'idle-unmount = "30"'))).toThrow(/idle-unmount: must be a whole number/);
    expect(() => load(toml('a.toml', 'allowed-repositories = "cms.cern.ch"'))).toThrow(/allowed-repositories: must be an array of strings/);
    expect(() => load(toml('p.toml', 'allowed-repositories = ["CMS"]'))).toThrow(/allowed-repositories: "CMS"/);
    expect(() => load(toml('t.toml', 'allowed-repositories = ['))).toThrow(/not valid TOML/);
    expect(() => load(path.join(dir, 'missing.toml'))).toThrow(/cannot read/);
  });

  it('serves with the config file; flags override it; SIGTERM stops and removes the socket', async () => {
    const cvmfs = path.join(dir, 'cvmfs');
    for (const r of ['cms.cern.ch', 'atlas.cern.ch']) mkdirSync(path.join(cvmfs, r), { recursive: true });
    const socket = path.join(dir, 'p.sock');
    const f = toml(
      'p.toml',
      `state-dir = "${path.join(dir, 'state')}"\ncvmfs-root = "${cvmfs}"\nallowed-repositories = ["cms.cern.ch"]\nidle-unmount = 5\nknown-volumes = ["cms.cern.ch"]\n`,
    );
    const p = await startVolumePlugin('unused', ['--config', f], { socket });
    try {
      expect((await pluginCall(socket, 'VolumeDriver.Get', { Name: 'cms.cern.ch' })).status).toBe(200);
      expect((await pluginCall(socket, 'VolumeDriver.Get', { Name: 'atlas.cern.ch' })).json()['Err']).toBe(
        'repository "atlas.cern.ch" is not allowed on this node (allowed: cms.cern.ch)',
      );
      expect(p.output()).toContain(`"stateDir":"${path.join(dir, 'state')}"`);
    } finally {
      expect(await p.stop('SIGTERM')).toBe(0);
    }
    expect(existsSync(socket)).toBe(false);
    expect(p.output()).toContain('volume plugin stopped; mounts kept');
    const q = await startVolumePlugin('unused', ['--config', f, '--allowed-repository', 'atlas.cern.ch', '*.example.org', '--known-volume', 'atlas.cern.ch'], {
      socket,
    });
    try {
      expect((await pluginCall(socket, 'VolumeDriver.Get', { Name: 'atlas.cern.ch' })).status).toBe(200);
      expect((await pluginCall(socket, 'VolumeDriver.Get', { Name: 'sw.example.org' })).json()['Err']).toMatch(/^no such volume: sw\.example\.org/);
      expect((await pluginCall(socket, 'VolumeDriver.Get', { Name: 'cms.cern.ch' })).json()['Err']).toMatch(
        /not allowed on this node \(allowed: atlas.cern.ch, \*.example.org\)/,
      );
    } finally {
      await q.stop();
    }
  });

  it('fails to start with a clear message', async () => {
    const state = ['--state-dir', path.join(dir, 's2')];
    // invalid arguments exit with 2 (src/cli/main.ts), commander's own errors with 1
    const cases: [string[], number, RegExp][] = [
      [['--config', toml('bad.toml', 'repository = "x"'), ...state], 2, /^cvmfs-thin: config .*bad.toml: unknown key\(s\) "repository"/],
      [['--state-dir', 'relative/dir', '--socket', path.join(dir, 'x.sock')], 2, /^cvmfs-thin: --state-dir "relative\/dir" must be an absolute path/],
      [['--backend', 'nfs', ...state], 1, /argument 'nfs' is invalid. Allowed choices are host, client/],
      [['--idle-unmount', 'soon', ...state, '--socket', path.join(dir, 'y.sock')], 2, /^cvmfs-thin: --idle-unmount "soon": must be a whole number of seconds/],
      [['--cvmfs-timeout', '0', ...state, '--socket', path.join(dir, 'w.sock')], 2, /^cvmfs-thin: --cvmfs-timeout must be from 1 to 600 seconds/],
      [
        ['--allowed-repository', 'CMS', ...state, '--socket', path.join(dir, 'z.sock')],
        2,
        /^cvmfs-thin: allowed repository "CMS": is not a fully qualified CVMFS repository name/,
      ],
      [
        ['--known-volume', 'CMS', ...state, '--socket', path.join(dir, 'k.sock')],
        2,
        /^cvmfs-thin: known-volumes: volume name "CMS": is not a fully qualified CVMFS repository name/,
      ],
      [['--socket', path.join(dir, `${'s'.repeat(120)}.sock`), ...state], 2, /is longer than 107 bytes \(the unix socket limit\)/],
    ];
    for (const [args, code, err] of cases) {
      const r = await runVolumePluginCommand(args);
      expect([args, r.code]).toEqual([args, code]);
      expect(r.out).toMatch(err);
    }
  });
});
