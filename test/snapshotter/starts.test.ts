/**
 * Container starts in the snapshotter (issue 18) without root: the trace of
 * each start (phases, profile, prefetch) written for `cvmfs-thin why-slow`,
 * the access profile looked up in the repository then locally and read ahead
 * through the host's probe (here the recording host, real files), and every
 * way a profile can be wrong costing only the prefetch, never the Prepare.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { type StartTrace, traceFile } from '../../src/core/stack/start-trace.js';
import { PROFILE_SCHEMA, profilePath, serializeProfile, stackId, type AccessProfile } from '../../src/core/thin/profile.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import type { StartOptions } from '../../src/snapshotter/starts.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { runCli } from '../helpers/daemon.js';
import { tempDir } from '../helpers/env.js';
import { findTrace, formatTrace } from '../../src/cli/why-slow.js';
import { RecordingHost } from '../helpers/recording-host.js';

const REPO = 'unpacked.cern.ch';

describe('container starts: traces and access-profile prefetch (unprivileged, recording host)', () => {
  const base = tempDir('sn-starts-');
  let n = 0;
  let dir: string;
  let root: string;
  let repoRoot: string;
  let host: RecordingHost;
  let sn: Snapshotter;
  let logs: Record<string, unknown>[];
  let layers: FakeLayer[];

  const open = (starts: StartOptions = {}) => {
    const log = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (logs.push(JSON.parse(String(c)) as Record<string, unknown>), cb()) }));
    return Snapshotter.open({ root, location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }), host, log, starts });
  };
  const image = async (name = 'img') => {
    const ms = await sn.prepare(`extract-${name}`, '', {});
    writeFileSync(path.join(ms[0]!.source, 'thin.json'), thinJson(REPO, layers));
    await sn.commit(name, `extract-${name}`, {});
  };
  const trace = (key: string) => JSON.parse(readFileSync(traceFile(path.join(root, 'traces'), key), 'utf8')) as StartTrace;
  const profile = (files: AccessProfile['files'], extra: Partial<AccessProfile> = {}): AccessProfile => ({
    schema: PROFILE_SCHEMA,
    version: 1,
    layers: layers.map((l) => l.hex),
    prefetch: true,
    created: new Date().toISOString(),
    files,
    ...extra,
  });
  const publish = (p: AccessProfile | string) => {
    const f = path.join(repoRoot, profilePath(layers.map((l) => l.hex)));
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, typeof p === 'string' ? p : serializeProfile(p));
  };
  // the hot layer's image, probed beside the profile (hot-image.ts), is not read-ahead
  const reads = () =>
    host
      .ops('probeFs')
      .flatMap((c) => (c.args as string[]).filter((a) => a.startsWith('read ')).map((a) => a.slice(5)))
      .filter((r) => !/\.erofs(-data)?$/.test(r));

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    root = path.join(dir, 'root');
    repoRoot = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repoRoot, { recursive: true });
    host = new RecordingHost();
    logs = [];
    layers = [
      addLayer(repoRoot, `base${n}`, { 'bin/sh': 'shell', 'etc/passwd': 'root:x:0:0' }, { converter: true }),
      addLayer(repoRoot, `app${n}`, { 'app/main.py': 'print(1)', 'app/lib.py': 'x = 1' }, { converter: true }),
    ];
    sn = await open({ budgetMs: 100_000 });
  });
  afterEach(async () => {
    await sn.close();
  });

  it("reads the repository profile ahead from the pull (Commit) on; a container's trace has the phases, the profile and the prefetch it joined", async () => {
    publish(
      profile([
        { path: 'bin/sh', layer: layers[0]!.hex, size: 5 },
        { path: 'app/main.py', layer: layers[1]!.hex, size: 8 },
        { path: 'app/gone.py', layer: layers[1]!.hex, size: 3 },
      ]),
    );
    await image();
    await sn.startsIdle();
    // read at the pull, before any container
    expect(reads().filter((r) => !r.endsWith('.json'))).toEqual([
      path.join(layers[0]!.dir, 'bin/sh'),
      path.join(layers[1]!.dir, 'app/main.py'),
      path.join(layers[1]!.dir, 'app/gone.py'),
    ]);
    const ms = await sn.prepare('ctr', 'img', {});
    expect(ms[0]!.type).toBe('overlay');
    await sn.startsIdle();
    const t = trace('ctr');
    expect(t).toMatchObject({
      schema: 'cvmfs-thin/start-trace',
      snapshot: 'ctr',
      image: 'img',
      origin: 'test',
      layers: 2,
      profile: 'repository',
      budgetMs: 100_000,
    });
    expect(Object.keys(t.phases).sort()).toEqual(['cvmfs', 'dirs', 'journal', 'resolve']);
    expect(t.prefetch).toMatchObject({ files: 2, bytes: 13, missing: 1, failed: 0 });
    expect(Date.parse(t.prefetchStarted!)).toBeLessThanOrEqual(Date.parse(t.started));
    expect(t.verdict).toMatch(/^within budget; .* ms of our own work .*; prefetch read 2 file\(s\)/);
    // a view (no container) and a second container of the same image soon after: no second prefetch
    await sn.view('v', 'img', {});
    await sn.prepare('ctr2', 'img', {});
    await sn.startsIdle();
    expect(trace('ctr2')).toMatchObject({ profile: 'repository', prefetchStarted: t.prefetchStarted, prefetch: t.prefetch });
    expect(reads().filter((r) => r.endsWith('main.py'))).toHaveLength(1);
    // cvmfs-thin why-slow: by key or unique prefix; the text says where the time went
    const traces = path.join(root, 'traces');
    expect((await findTrace(traces, 'ctr2')).snapshot).toBe('ctr2');
    // containerd's keys are <namespace>/<n>/<key>: the container ID finds them
    await sn.prepare('default/17/4f2a9c', 'img', {});
    await sn.startsIdle();
    expect((await findTrace(traces, '4f2a9c')).snapshot).toBe('default/17/4f2a9c');
    expect((await findTrace(traces, '4f2')).snapshot).toBe('default/17/4f2a9c');
    await expect(findTrace(traces, 'ct')).rejects.toThrow(/"ct" matches 2 starts \(ctr, ctr2…\): give more of it/);
    await expect(findTrace(traces, 'nope')).rejects.toThrow(/no trace of a start of "nope"/);
    await expect(findTrace(path.join(root, 'missing'), 'x')).rejects.toThrow(
      /no start traces in .*missing \(is this the snapshotter's root, --root, or the graph driver's state directory, --state-dir\?\)/,
    );
    // several daemons' directories: a missing one is skipped, the key is found in another
    expect((await findTrace([path.join(root, 'missing'), traces], 'ctr2')).snapshot).toBe('ctr2');
    await expect(findTrace([path.join(root, 'missing'), traces], 'nope')).rejects.toThrow(/no trace of a start of "nope" in .*missing or .*traces/);
    const text = formatTrace(t);
    expect(text).toMatch(/^start of ctr \(snapshotter\) at .*: image test \(snapshot img\), 2 layer\(s\)\n {2}our own work: [\d.]+ ms \(budget 100000 ms\)\n/);
    expect(text).toContain('  access profile: repository\n  prefetch: 2 file(s), 0 KiB in');
    expect(text).toMatch(/ {4}resolve +[\d.]+ ms {2}the thin image's CVMFS layers resolved/);
    const cli = await runCli(['why-slow', '--root', root, 'ctr2', '--json']);
    expect([cli.code, JSON.parse(cli.out).snapshot]).toEqual([0, 'ctr2']);
    const miss = await runCli(['why-slow', '--root', root, 'zzz']);
    expect([miss.code, miss.out]).toEqual([1, expect.stringMatching(/^cvmfs-thin: no trace of a start of "zzz"/)]);
  });

  it('falls back to a profile recorded on this node; a profile of other layers, a broken or hostile one, or an opted-out image prefetch nothing', async () => {
    type Case = () => [string | AccessProfile | null, AccessProfile | null, RegExp];
    const cases: Case[] = [
      () => [null, profile([{ path: 'etc/passwd', layer: layers[0]!.hex, size: 10 }]), /^local$/],
      () => [profile([{ path: 'app/main.py', size: 8 }], { prefetch: false }), null, /^disabled \(repository\)$/],
      () => ['{"schema": "cvmfs-thin/access-profile", "version": 1', null, /^invalid: access profile: file: is not valid JSON/],
      () => [serializeProfile(profile([])).replace('"files"', '"extra": 1, "files"'), null, /^invalid: access profile: extra: is not a known field/],
      () => [
        profile([{ path: '../../../etc/shadow', layer: layers[0]!.hex, size: 1 }]),
        null,
        /^invalid: access profile: files\[0\]\.path: "\.\.\/\.\.\/\.\.\/etc\/shadow" is not a normalised path/,
      ],
      () => [
        profile([{ path: 'x', layer: 'f'.repeat(64), size: 1 }]),
        null,
        /^invalid: access profile: files\[0\]\.layer: must be one of the profile's layers/,
      ],
      () => [profile([], { layers: ['a'.repeat(64)] }), null, /^invalid: .* is for other layers$/],
      () => [null, null, /^none$/],
    ];
    for (const [i, c] of cases.entries()) {
      await sn.close();
      dir = path.join(base, `${n++}-${i}`);
      root = path.join(dir, 'root');
      repoRoot = path.join(dir, 'cvmfs', REPO);
      mkdirSync(repoRoot, { recursive: true });
      layers = [
        addLayer(repoRoot, 'b', { 'etc/passwd': 'root:x:0:0' }, { converter: true }),
        addLayer(repoRoot, 'a', { 'app/main.py': 'print(1)' }, { converter: true }),
      ];
      host = new RecordingHost();
      sn = await open();
      const [repo, local, want] = c();
      if (repo !== null) publish(repo);
      if (local) {
        mkdirSync(path.join(root, 'profiles'), { recursive: true });
        writeFileSync(path.join(root, 'profiles', `${stackId(layers.map((l) => l.hex))}.json`), serializeProfile(local));
      }
      await image();
      await sn.prepare('ctr', 'img', {});
      await sn.startsIdle();
      const t = trace('ctr');
      expect([i, t.profile]).toEqual([i, expect.stringMatching(want)]);
      expect([i, reads().filter((r) => !r.endsWith('.json'))]).toEqual([i, local ? [path.join(layers[0]!.dir, 'etc/passwd')] : []]);
    }
  });

  it('a start over the budget logs why; the trace file of a hostile snapshot key stays in traces/', async () => {
    await sn.close();
    sn = await open({ budgetMs: 1, prefetch: false });
    await image();
    // hold the CVMFS check of the container's layers for a while: the Prepare is slow
    host.stalled.add(layers[1]!.dir);
    const p = sn.prepare('../../evil/ctr', 'img', {});
    await new Promise((r) => setTimeout(r, 30));
    host.unstall();
    await p;
    await sn.startsIdle();
    const warn = logs.find((l) => String(l['msg']).startsWith('slow start: over the 1 ms budget'));
    expect(warn).toMatchObject({ level: 40, snapshot: '../../evil/ctr', image: 'img', layers: 2 });
    expect((warn!['phases'] as Record<string, number>)['cvmfs']).toBeGreaterThanOrEqual(25);
    expect(trace('../../evil/ctr').snapshot).toBe('../../evil/ctr');
    expect(reads().filter((r) => !r.endsWith('.json'))).toEqual([]); // --no-prefetch: nothing read ahead
    expect(traceFile(path.join(root, 'traces'), '../../evil/ctr').startsWith(path.join(root, 'traces') + path.sep)).toBe(true);
  });

  it('a stalled CVMFS never holds a stop: a read-ahead stuck in it is left behind within 2 s; a stalled profile lookup is named in the trace', async () => {
    publish(profile([{ path: 'bin/sh', layer: layers[0]!.hex, size: 5 }]));
    host.stalled.add(path.join(layers[0]!.dir, 'bin'));
    await image();
    await sn.prepare('ctr', 'img', {});
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    await sn.close();
    expect(Date.now() - t0).toBeLessThan(3000);
    host.unstall();
    // a profile lookup in a stalled repository: "unavailable", within the probe's deadline
    sn = await Snapshotter.open({
      root: path.join(dir, 'root2'),
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }),
      host,
      log: silentLogger(),
      cvmfsTimeoutMs: 300,
    });
    host.stalled.add(path.join(repoRoot, '.profiles'));
    const ms = await sn.prepare('extract-x', '', {});
    writeFileSync(path.join(ms[0]!.source, 'thin.json'), thinJson(REPO, layers));
    await sn.commit('x', 'extract-x', {});
    await sn.prepare('ctr-x', 'x', {});
    await sn.startsIdle();
    host.unstall();
    expect(JSON.parse(readFileSync(traceFile(path.join(dir, 'root2', 'traces'), 'ctr-x'), 'utf8')).profile).toMatch(
      /^unavailable: .*\.json did not answer within 0\.3 s \(cvmfs-timeout\)$/,
    );
  });

  it('an ordinary image (no thin layer) leaves no trace; silent logger, no budget: nothing logged', async () => {
    await sn.close();
    sn = await Snapshotter.open({ root, location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') }), host, log: silentLogger() });
    const ms = await sn.prepare('l1', '', {});
    writeFileSync(path.join(ms[0]!.source, 'file'), 'x');
    await sn.commit('c1', 'l1', {});
    await sn.prepare('ctr', 'c1', {});
    await sn.startsIdle();
    expect(() => trace('ctr')).toThrow(/ENOENT/);
  });
});
