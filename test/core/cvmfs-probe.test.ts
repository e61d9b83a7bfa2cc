/**
 * The CVMFS probe's semantics (core/host/probe.ts) through the recording
 * host: one outstanding probe per mount, batching, the deadline, failing at
 * once while a mount stalls, one retry per deadline, the late answer; and
 * LayerStack.checkAvailable's errors. test/core/cvmfs-faults.test.ts does the
 * same against a real FUSE file system that is killed and stopped.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { LayerStack } from '../../src/core/stack/index.js';
import { CvmfsProbe, cvmfsRootOf, StalledError } from '../../src/core/host/probe.js';
import { addLayer } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const base = tempDir('probe-');
let n = 0;

function setup(timeoutMs = 300) {
  const dir = path.join(base, String(n++));
  const repo = path.join(dir, 'cvmfs', 'unpacked.cern.ch');
  mkdirSync(repo, { recursive: true });
  const host = new RecordingHost();
  const stalls: string[] = [];
  const probe = new CvmfsProbe({ host, log: silentLogger(), timeoutMs, onStall: (k) => stalls.push(k) });
  return { dir, repo, host, probe, stalls };
}

const statfs = (p: string) => ({ op: 'statfs' as const, path: p });
const stat = (p: string) => ({ op: 'stat' as const, path: p });
const probes = (h: RecordingHost) => h.ops('probeFs').map((c) => c.args);

async function failure(p: Promise<unknown>): Promise<{ code: string; message: string; ms: number }> {
  const t0 = Date.now();
  try {
    await p;
  } catch (e) {
    if (!ThinError.is(e)) throw e;
    return { code: e.code, message: e.message, ms: Date.now() - t0 };
  }
  throw new Error('expected a failure');
}

describe('CvmfsProbe', () => {
  it('keeps one probe per mount outstanding: callers meanwhile share the next one, each gets its own answers', async () => {
    const { repo, host, probe } = setup(5000);
    const a = addLayer(repo, 'a', { f: 'x' });
    const b = addLayer(repo, 'b', { f: 'y' });
    host.stalled.add(a.dir); // holds the first probe until released
    const first = probe.run(repo, [stat(a.dir)], 'first', statfs(repo));
    await new Promise((r) => setTimeout(r, 20));
    const second = probe.run(repo, [stat(b.dir)], 'second', statfs(repo));
    const third = probe.run(repo, [stat(b.dir), stat(path.join(repo, 'missing'))], 'third', statfs(repo));
    await new Promise((r) => setTimeout(r, 20));
    expect(probes(host)).toEqual([[`statfs ${repo}`, `stat ${a.dir}`]]);
    host.unstall();
    const [r1, r2, r3] = await Promise.all([first, second, third]);
    // the two waiting callers went out as one batch, with the statfs first and each directory once
    expect(probes(host)).toEqual([
      [`statfs ${repo}`, `stat ${a.dir}`],
      [`statfs ${repo}`, `stat ${b.dir}`, `stat ${path.join(repo, 'missing')}`],
    ]);
    expect(CvmfsProbe.get(r1, stat(a.dir))).toMatchObject({ ok: true, dir: true });
    expect(CvmfsProbe.get(r2, stat(b.dir))).toMatchObject({ ok: true, dir: true });
    expect(CvmfsProbe.get(r3, stat(path.join(repo, 'missing')))).toMatchObject({ ok: false, code: 'ENOENT' });
  });

  it('fails within the deadline on a stalled mount, then at once, retries once per deadline, and recovers on the late answer', async () => {
    const { repo, host, probe, stalls } = setup(300);
    host.stalled.add(repo);
    const f1 = await failure(probe.run(repo, [], 'Prepare of ctr', statfs(repo)));
    expect(f1.code).toBe('CVMFS_THIN_CVMFS_STALLED');
    expect(f1.message).toMatch(new RegExp(`^Prepare of ctr: CVMFS at ${repo} did not answer within 0.3 s \\(cvmfs-timeout\\)`));
    expect(f1.ms).toBeGreaterThanOrEqual(290);
    expect(f1.ms).toBeLessThan(1000);
    expect(stalls).toEqual([repo]);
    expect(probe.stalledSince(repo)).toBeTypeOf('number');
    // while it stalls: at once, and no new probe piles up in the helper
    const f2 = await failure(probe.run(repo, [], 'Mounts of ctr', statfs(repo)));
    expect(f2.code).toBe('CVMFS_THIN_CVMFS_STALLED');
    expect(f2.message).toMatch(/has not answered for 0\.\d+ s \(deadline 0.3 s, cvmfs-timeout\)/);
    expect(f2.ms).toBeLessThan(50);
    expect(probes(host)).toHaveLength(1);
    // a deadline later: one more probe (the mount may have been replaced), which stalls too
    await new Promise((r) => setTimeout(r, 320));
    const f3 = await failure(probe.run(repo, [], 'again', statfs(repo)));
    expect(f3.ms).toBeGreaterThanOrEqual(290);
    expect(probes(host)).toHaveLength(2);
    expect(stalls).toHaveLength(2);
    // the client answers again: the stuck probes come back, the stall is over
    host.unstall();
    await new Promise((r) => setTimeout(r, 20));
    expect(probe.stalledSince(repo)).toBeUndefined();
    const ok = await probe.run(repo, [], 'after', statfs(repo));
    expect(CvmfsProbe.get(ok, statfs(repo))).toMatchObject({ ok: true });
  });

  it('one stalled mount does not hold up another', async () => {
    const { dir, host, probe } = setup(300);
    const other = path.join(dir, 'cvmfs', 'other.cern.ch');
    mkdirSync(other, { recursive: true });
    host.stalled.add(path.join(dir, 'cvmfs', 'unpacked.cern.ch'));
    const stuck = failure(probe.run(path.join(dir, 'cvmfs', 'unpacked.cern.ch'), [], 'x', statfs(path.join(dir, 'cvmfs', 'unpacked.cern.ch'))));
    const t0 = Date.now();
    const r = await probe.answer(other, statfs(other), 'y');
    expect(r).toMatchObject({ ok: true });
    expect(Date.now() - t0).toBeLessThan(100);
    expect((await stuck).code).toBe('CVMFS_THIN_CVMFS_STALLED');
    expect(await probe.answer(path.join(dir, 'cvmfs', 'unpacked.cern.ch'), statfs(path.join(dir, 'cvmfs', 'unpacked.cern.ch')), 'z')).toBe('stalled');
    host.unstall();
  });

  it('cvmfsRootOf: the mount part of a layer, chain or flat directory', () => {
    expect(cvmfsRootOf('/cvmfs/unpacked.cern.ch/.layers/ab/abc/layerfs')).toBe('/cvmfs/unpacked.cern.ch');
    expect(cvmfsRootOf('/x/y/.chains/abc')).toBe('/x/y');
    expect(cvmfsRootOf('/x/y/.flat/ab/abc')).toBe('/x/y');
    expect(cvmfsRootOf('/somewhere/else')).toBe('/somewhere/else');
  });
});

describe('LayerStack.checkAvailable through the probe', () => {
  async function stackOf(s: ReturnType<typeof setup>) {
    return LayerStack.open({
      root: path.join(s.dir, 'state'),
      location: cvmfsLocation({ cvmfsRoot: path.join(s.dir, 'cvmfs') }),
      host: s.host,
      log: silentLogger(),
      factsFile: path.join(s.dir, 'state', 'facts.json'),
      cvmfsTimeoutMs: 300,
    });
  }

  it('answers the owners of the directories; ENOTCONN, a missing directory and a stall each give their error naming the directory', async () => {
    const s = setup();
    const stack = await stackOf(s);
    const a = addLayer(s.repo, 'a', { f: 'x' });
    const owners = await stack.checkAvailable([a.dir, path.join(stack.masksDir, 'm', 'above')], 'snapshot ctr');
    expect([...owners.keys()]).toEqual([a.dir]); // masks are local: not asked
    expect(owners.get(a.dir)).toEqual({ uid: process.getuid!(), gid: process.getgid!() });
    expect(s.host.ops('statfs')).toHaveLength(1); // one statfs per mount, in the probe

    s.host.broken.add(s.repo);
    const dead = await failure(stack.checkAvailable([a.dir], 'snapshot ctr'));
    expect(dead.code).toBe('CVMFS_THIN_LAYER_UNAVAILABLE');
    expect(dead.message).toBe(
      `layer directory ${a.dir} of snapshot ctr is not available (its CVMFS client is not connected): the client of ${s.repo} died; mount it again — new containers then work, running ones on it must be restarted`,
    );
    s.host.broken.clear();

    const gone = await failure(stack.checkAvailable([`${a.dir}-gone`], 'snapshot ctr'));
    expect(gone).toMatchObject({
      code: 'CVMFS_THIN_LAYER_UNAVAILABLE',
      message: `layer directory ${a.dir}-gone of snapshot ctr is not available (is CVMFS mounted?)`,
    });

    s.host.stalled.add(s.repo);
    const stalled = await failure(stack.checkAvailable([a.dir], 'snapshot ctr'));
    expect(stalled.code).toBe('CVMFS_THIN_CVMFS_STALLED');
    expect(stalled.message).toContain(`layer directory ${a.dir} of snapshot ctr: CVMFS at ${s.repo} did not answer within 0.3 s`);
    expect(await stack.cvmfsReady()).toMatch(/does not answer within 0.3 s \(CVMFS stalled\)/);
    s.host.unstall();
    await new Promise((r) => setTimeout(r, 20));
    expect(await stack.cvmfsReady()).toBeNull();
    expect(StalledError).toBeTypeOf('function');
  });

  it('checkRepositories: a dead or stalled repository fails before anything is resolved; a missing one is left to the resolver', async () => {
    const s = setup();
    const stack = await stackOf(s);
    await expect(stack.checkRepositories([{ repository: 'unpacked.cern.ch', rel: '.layers/ab/x/layerfs' }], 'thin image t')).resolves.toBeUndefined();
    await expect(stack.checkRepositories([{ repository: 'other.cern.ch', rel: 'x' }], 'thin image t')).resolves.toBeUndefined();
    s.host.broken.add(s.repo);
    expect((await failure(stack.checkRepositories([{ repository: 'unpacked.cern.ch', rel: 'x' }], 'thin image t'))).message).toContain(
      'its CVMFS client is not connected',
    );
    s.host.broken.clear();
    s.host.stalled.add(s.repo);
    expect((await failure(stack.checkRepositories([{ repository: 'unpacked.cern.ch', rel: 'x' }], 'thin image t'))).code).toBe('CVMFS_THIN_CVMFS_STALLED');
    s.host.unstall();
  });
});
