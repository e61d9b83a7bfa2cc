/**
 * End to end with Debian's dockerd 20.10 and `cvmfs-thin volume-plugin` on a
 * legacy discovery socket: stand-in repositories (directory trees) used as
 * volumes by real containers, shared, restarted, across plugin and dockerd
 * restarts, and hostile names.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { type Dockerd, removeTestDir, shortTempDir, startDockerd } from '../graphdriver/harness.js';
import { loadBusybox, mountCount, mountsBelow, startVolumePlugin, type VolumePlugin } from './harness.js';

describe.skipIf(needs({ root: true, binaries: ['dockerd', 'containerd', 'runc'] }))('volume plugin with dockerd 20.10', () => {
  const name = `cvmfsvoltest${process.pid}`;
  let dir: string;
  let cvmfs: string;
  let mounts: string;
  let plugin: VolumePlugin | undefined;
  let dockerd: Dockerd | undefined;
  let image: string;
  const docker = (args: string[], o?: Parameters<Dockerd['docker']>[1]) => dockerd!.docker(args, o);
  const fails = (args: string[]) => docker(args, { allowFail: true });
  const pluginArgs = () => [
    '--state-dir',
    path.join(dir, 'state'),
    '--cvmfs-root',
    cvmfs,
    '--allowed-repository',
    '*.cern.ch',
    '--known-volume',
    'atlas.cern.ch',
  ];
  const cms = () => path.join(mounts, 'cms.cern.ch');
  const runRm = async (vol: string[], script: string) => (await docker(['run', '--rm', '--network', 'none', ...vol, image, 'sh', '-c', script])).stdout;
  const names = async () =>
    (await docker(['volume', 'ls', '--format', '{{.Driver}} {{.Name}}'])).stdout
      .split('\n')
      .filter((l) => l.startsWith(`${name} `))
      .map((l) => l.slice(name.length + 1))
      .sort();

  beforeAll(async () => {
    dir = shortTempDir('dvol-');
    cvmfs = path.join(dir, 'cvmfs');
    mounts = path.join(dir, 'state', 'mounts');
    const files: [string, string, string][] = [
      ['cms.cern.ch', 'README', 'cms stand-in\n'],
      ['atlas.cern.ch', 'README', 'atlas stand-in\n'],
      ['sft.cern.ch', 'lcg/setup.sh', 'echo lcg\n'],
      ['evil.example.org', 'README', 'not allowed\n'],
    ];
    for (const [repo, file, content] of files) {
      mkdirSync(path.dirname(path.join(cvmfs, repo, file)), { recursive: true });
      writeFileSync(path.join(cvmfs, repo, file), content);
    }
    plugin = await startVolumePlugin(name, pluginArgs());
    dockerd = await startDockerd(path.join(dir, 'd'), 'vfs');
    image = await loadBusybox(dockerd, dir);
  }, 120_000);

  afterAll(async () => {
    if (dockerd) {
      await fails(['rm', '-f', 'c1', 'c2', 'c3', 'c4', 'c5']);
      await dockerd.stop();
    }
    await plugin?.stop();
    if (dir) removeTestDir(dir);
  });

  it('volume create, ls and inspect (local scope, repository status)', async () => {
    expect(await names()).toEqual(['atlas.cern.ch']); // --known-volume
    await docker(['volume', 'create', '-d', name, 'cms.cern.ch']);
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch']);
    const v = JSON.parse((await docker(['volume', 'inspect', 'cms.cern.ch'])).stdout) as Record<string, unknown>[];
    expect(v[0]).toMatchObject({ Driver: name, Name: 'cms.cern.ch', Scope: 'local', Mountpoint: '', Status: { repository: 'cms.cern.ch', mounted: false } });
    // a name never created is no volume (and stays unlisted)
    const typo = await fails(['volume', 'inspect', 'typo.cern.ch']);
    expect([typo.code, typo.stderr]).toEqual([1, expect.stringMatching(/No such volume: typo\.cern\.ch/i)]);
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch']); // atlas: --known-volume
    expect(mountsBelow(mounts)).toEqual([]);
  });

  it('-o and volume-opt= options of a new volume are applied, or refused naming the option', async () => {
    await docker(['volume', 'create', '-d', name, '-o', 'tag=prod-2024', '--name=lhcb.cern.ch']);
    const v = JSON.parse((await docker(['volume', 'inspect', 'lhcb.cern.ch'])).stdout) as {
      Options: Record<string, string>;
      Status: Record<string, unknown>;
    }[];
    expect([v[0]!.Options, v[0]!.Status]).toEqual([
      { tag: 'prod-2024' },
      expect.objectContaining({ repository: 'lhcb.cern.ch', tag: 'prod-2024', key: 'lhcb.cern.ch@prod-2024' }),
    ]);
    await docker(['volume', 'rm', 'lhcb.cern.ch']);
    const refused: [string, RegExp][] = [
      ['clientConfig=CVMFS_CACHE_BASE=/tmp/x', /VolumeDriver.Create: clientConfig line 1 "CVMFS_CACHE_BASE": may not be set per volume/],
      ['bogus=1', /VolumeDriver.Create: option "bogus": is not known \(known: tag, hash, date, clientConfig\)/],
      ['tag=a b', /VolumeDriver.Create: tag "a b": must be 1-128 characters/],
    ];
    for (const [o, err] of refused) {
      const r = await fails(['volume', 'create', '-d', name, '-o', o, '--name=lhcb.cern.ch']);
      expect([o, r.code, r.stderr]).toEqual([o, 1, expect.stringMatching(err)]);
    }
    // --mount volume-opt= reaches Create too: the tagged volume needs the client backend, which this node lacks
    const m = await fails([
      'run',
      '--rm',
      '--network',
      'none',
      '--mount',
      `type=volume,src=lhcb.cern.ch,dst=/x,volume-driver=${name},volume-opt=tag=v2`,
      image,
      'true',
    ]);
    expect(m.code).toBe(125);
    expect(JSON.parse((await docker(['volume', 'inspect', 'lhcb.cern.ch'])).stdout)[0].Status).toMatchObject({ tag: 'v2' });
    await docker(['volume', 'rm', 'lhcb.cern.ch']);
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch']);
    expect(mountsBelow(mounts)).toEqual([]);
  });

  it('a container reads the repository; :ro and plain volumes are both read-only', async () => {
    expect(await runRm(['-v', 'cms.cern.ch:/cvmfs/cms.cern.ch:ro'], 'cat /cvmfs/cms.cern.ch/README')).toBe('cms stand-in\n');
    const ro = await fails(['run', '--rm', '--network', 'none', '-v', 'cms.cern.ch:/cvmfs/cms.cern.ch:ro', image, 'touch', '/cvmfs/cms.cern.ch/x']);
    expect(ro.code).not.toBe(0);
    expect(ro.stderr).toContain('Read-only file system');
    const rw = await fails(['run', '--rm', '--network', 'none', '-v', 'cms.cern.ch:/cvmfs/cms.cern.ch', image, 'touch', '/cvmfs/cms.cern.ch/x']);
    expect(rw.code).not.toBe(0);
    expect(rw.stderr).toContain('Read-only file system');
    // run --rm exit sent Unmount: nothing stays mounted
    expect(mountsBelow(mounts)).toEqual([]);
  });

  it('two containers share one backend mount (-v and --mount volume-driver=); it goes with the last', async () => {
    await docker(['run', '-d', '--name', 'c1', '--network', 'none', '-v', 'cms.cern.ch:/cvmfs/cms.cern.ch', image, 'sleep', '1000']);
    await docker([
      'run',
      '-d',
      '--name',
      'c2',
      '--network',
      'none',
      '--mount',
      `type=volume,src=cms.cern.ch,dst=/c,volume-driver=${name},readonly`,
      image,
      'sleep',
      '1000',
    ]);
    expect((await docker(['exec', 'c1', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('cms stand-in\n');
    expect((await docker(['exec', 'c2', 'cat', '/c/README'])).stdout).toBe('cms stand-in\n');
    expect(mountCount(cms())).toBe(1);
    expect(mountsBelow(mounts)).toEqual([cms()]);
    const inUse = await fails(['volume', 'rm', 'cms.cern.ch']);
    expect(inUse.stderr).toContain('volume is in use');
    const v = JSON.parse((await docker(['volume', 'inspect', 'cms.cern.ch'])).stdout) as { Mountpoint: string; Status: Record<string, unknown> }[];
    expect(v[0]!.Mountpoint).toBe(cms());
    expect(v[0]!.Status).toMatchObject({ mounted: true, containers: 2, backend: 'host' });
    await docker(['stop', '-t', '0', 'c1']);
    expect(mountCount(cms())).toBe(1);
    expect((await docker(['exec', 'c2', 'cat', '/c/README'])).stdout).toBe('cms stand-in\n');
    await docker(['stop', '-t', '0', 'c2']);
    expect(mountsBelow(mounts)).toEqual([]);
    // start again (new mount IDs), restart, stop
    await docker(['start', 'c1']);
    expect((await docker(['exec', 'c1', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('cms stand-in\n');
    await docker(['restart', '-t', '0', 'c1']);
    expect(mountCount(cms())).toBe(1);
    expect((await docker(['exec', 'c1', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('cms stand-in\n');
    await docker(['stop', '-t', '0', 'c1']);
    expect(mountsBelow(mounts)).toEqual([]);
    await docker(['rm', 'c1', 'c2']);
  });

  it("-v without --volume-driver finds created and known volumes (others are local, Docker's default); --mount with volume-driver= works for a new name", async () => {
    expect(await runRm(['-v', 'atlas.cern.ch:/cvmfs/atlas.cern.ch'], 'cat /cvmfs/atlas.cern.ch/README')).toBe('atlas stand-in\n');
    expect((await docker(['volume', 'inspect', '--format', '{{.Driver}}', 'atlas.cern.ch'])).stdout.trim()).toBe(name);
    expect(await runRm(['-v', 'sft.cern.ch:/sft'], 'ls -A /sft')).toBe('');
    expect((await docker(['volume', 'inspect', '--format', '{{.Driver}}', 'sft.cern.ch'])).stdout.trim()).toBe('local');
    await docker(['volume', 'rm', 'sft.cern.ch']);
    expect(await runRm(['--mount', `type=volume,src=sft.cern.ch,dst=/sft,volume-driver=${name},readonly`], 'sh /sft/lcg/setup.sh')).toBe('lcg\n');
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch', 'sft.cern.ch']);
    expect(mountsBelow(mounts)).toEqual([]);
  });

  it('refuses anonymous volumes with a clear message', async () => {
    const r = await fails(['run', '--rm', '--network', 'none', '--volume-driver', name, '-v', '/data', image, 'true']);
    expect(r.code).toBe(125);
    expect(r.stderr).toMatch(/VolumeDriver.Create: volume name "[0-9a-f]{64}": is an anonymous volume name; CVMFS volumes are named after their repository/);
    const c = await fails(['volume', 'create', '-d', name]);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/is an anonymous volume name/);
    expect(mountsBelow(mounts)).toEqual([]);
  });

  it('refuses hostile and invalid names, mounting nothing', async () => {
    const cases: [string, RegExp][] = [
      ['../x', /VolumeDriver.Create: volume name "..\/x": is not a fully qualified CVMFS repository name/],
      ['a/b', /VolumeDriver.Create: volume name "a\/b": is not a fully qualified CVMFS repository name/],
      ['CMS.cern.ch', /VolumeDriver.Create: volume name "CMS.cern.ch": is not a fully qualified CVMFS repository name \(lower case/],
      ['evil.example.org', /VolumeDriver.Create: repository "evil.example.org" is not allowed on this node \(allowed: \*\.cern\.ch\)/],
      ['f'.repeat(64), /VolumeDriver.Create: volume name "f{64}": is an anonymous volume name/],
      [`${'a'.repeat(300)}.cern.ch`, /VolumeDriver.Create: volume name "a{300}…": is longer than 253 characters/],
      ['cms.cern.ch@../../etc', /VolumeDriver.Create: tag "..\/..\/etc": must be 1-128 characters/],
    ];
    for (const [n, err] of cases) {
      const r = await fails(['volume', 'create', '-d', name, n]);
      expect([n, r.code]).toEqual([n, 1]);
      expect(r.stderr).toMatch(err);
      const m = await fails(['run', '--rm', '--network', 'none', '--mount', `type=volume,src=${n},dst=/x,volume-driver=${name}`, image, 'true']);
      expect([n, m.code]).toEqual([n, 125]);
    }
    // empty: the CLI generates an anonymous name (above); an empty --mount src is an anonymous volume too
    const e = await fails(['run', '--rm', '--network', 'none', '--mount', `type=volume,dst=/x,volume-driver=${name}`, image, 'true']);
    expect(e.stderr).toMatch(/is an anonymous volume name/);
    expect(mountsBelow(mounts)).toEqual([]);
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch', 'sft.cern.ch']);
  });

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    it(`a plugin restart (${signal}) while a container runs: it keeps its files, no double or leaked mount`, async () => {
      await docker(['run', '-d', '--name', 'c3', '--network', 'none', '-v', 'cms.cern.ch:/cvmfs/cms.cern.ch', image, 'sleep', '1000']);
      expect(mountCount(cms())).toBe(1);
      await plugin!.stop(signal);
      expect((await docker(['exec', 'c3', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('cms stand-in\n');
      expect(mountCount(cms())).toBe(1);
      plugin = await startVolumePlugin(name, pluginArgs());
      expect(mountCount(cms())).toBe(1);
      // a second container after the restart shares the mount
      expect(await runRm(['-v', 'cms.cern.ch:/c'], 'cat /c/README')).toBe('cms stand-in\n');
      expect(mountCount(cms())).toBe(1);
      expect((await docker(['exec', 'c3', 'cat', '/cvmfs/cms.cern.ch/README'])).stdout).toBe('cms stand-in\n');
      await docker(['stop', '-t', '0', 'c3']);
      expect(mountsBelow(mounts)).toEqual([]);
      await docker(['rm', 'c3']);
    });
  }

  it("a dockerd restart keeps the volumes listed and usable; a running container's volume is released at shutdown", async () => {
    await docker(['create', '--name', 'c4', '--network', 'none', '-v', 'sft.cern.ch:/sft', image, 'sh', '/sft/lcg/setup.sh']);
    await docker(['run', '-d', '--name', 'c5', '--stop-timeout', '1', '--network', 'none', '-v', 'atlas.cern.ch:/a', image, 'sleep', '1000']);
    expect(mountsBelow(mounts)).toEqual([path.join(mounts, 'atlas.cern.ch')]);
    await dockerd!.stop();
    expect(mountsBelow(mounts)).toEqual([]);
    dockerd = await startDockerd(path.join(dir, 'd'), 'vfs');
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch', 'sft.cern.ch']);
    expect((await docker(['start', '-a', 'c4'])).stdout).toBe('lcg\n');
    await docker(['start', 'c5']);
    expect((await docker(['exec', 'c5', 'cat', '/a/README'])).stdout).toBe('atlas stand-in\n');
    expect(await runRm(['-v', 'cms.cern.ch:/c'], 'cat /c/README')).toBe('cms stand-in\n');
    await docker(['rm', '-f', 'c5']);
    expect(mountsBelow(mounts)).toEqual([]);
    await docker(['rm', 'c4']);
  });

  it('volume rm forgets a volume (a known one stays); --volume-driver brings it back', async () => {
    await docker(['volume', 'rm', 'atlas.cern.ch', 'sft.cern.ch']);
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch']);
    expect((await fails(['volume', 'inspect', 'sft.cern.ch'])).code).toBe(1);
    expect(await runRm(['--volume-driver', name, '-v', 'sft.cern.ch:/a'], 'sh /a/lcg/setup.sh')).toBe('lcg\n');
    expect(await names()).toEqual(['atlas.cern.ch', 'cms.cern.ch', 'sft.cern.ch']);
    expect(mountsBelow(mounts)).toEqual([]);
    expect(plugin!.output()).not.toMatch(/"level":50/); // no internal errors logged
  });
});
