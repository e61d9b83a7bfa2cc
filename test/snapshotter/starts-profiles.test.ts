/**
 * The access profiles kept on a node (`<root>/profiles`, core/stack/
 * local-profiles.ts), unprivileged with the recording host: a profile goes
 * with the last snapshot of its stack once the repository has it (or after
 * the window to publish it), the newest are kept under a cap, hostile entries
 * are left alone and logged once, and the sweep never holds up a request.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { type StartTrace, traceFile } from '../../src/core/stack/start-trace.js';
import { PROFILE_SCHEMA, profilePath, serializeProfile, stackId, type AccessProfile } from '../../src/core/thin/profile.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import type { StartOptions } from '../../src/snapshotter/starts.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const REPO = 'unpacked.cern.ch';
const DAY = 86_400_000;

describe('access profiles kept on a node: swept with their images, capped, hostile entries left alone (recording host)', () => {
  const base = tempDir('sn-profiles-');
  let n = 0;
  let dir: string;
  let root: string;
  let repoRoot: string;
  let host: RecordingHost;
  let sn: Snapshotter;
  let logs: Record<string, unknown>[];
  let layers: FakeLayer[];

  const profiles = () => path.join(root, 'profiles');
  const open = (starts: StartOptions = {}) => {
    const log = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (logs.push(JSON.parse(String(c)) as Record<string, unknown>), cb()) }));
    const location = cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(dir, 'cvmfs') });
    return Snapshotter.open({ root, location, host, log, starts, cvmfsTimeoutMs: 120_000 });
  };
  const image = async (name: string, of: FakeLayer[] = layers) => {
    const ms = await sn.prepare(`extract-${name}`, '', {});
    writeFileSync(path.join(ms[0]!.source, 'thin.json'), thinJson(REPO, of));
    await sn.commit(name, `extract-${name}`, {});
  };
  const profile = (hexes: string[], created = new Date().toISOString()): AccessProfile => ({
    schema: PROFILE_SCHEMA,
    version: 1,
    layers: hexes,
    prefetch: true,
    created,
    files: [{ path: 'bin/sh', layer: hexes[0], size: 5 }],
  });
  /** A profile as this node records it; `ageMs` old. */
  const local = (p: AccessProfile, ageMs = 0) => {
    mkdirSync(profiles(), { recursive: true, mode: 0o700 });
    const f = path.join(profiles(), `${stackId(p.layers)}.json`);
    writeFileSync(f, serializeProfile(p));
    const t = new Date(Date.now() - ageMs);
    utimesSync(f, t, t);
    return f;
  };
  const publish = (p: AccessProfile) => {
    const f = path.join(repoRoot, profilePath(p.layers));
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, serializeProfile(p));
  };
  const hexes = () => layers.map((l) => l.hex);
  const randomStack = (i: number) => [String(i % 10).repeat(64)];
  const warnings = (re: RegExp) => logs.filter((l) => l['level'] === 40 && re.test(String(l['msg'])));

  beforeEach(async () => {
    dir = path.join(base, String(n++));
    root = path.join(dir, 'root');
    repoRoot = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repoRoot, { recursive: true });
    host = new RecordingHost();
    logs = [];
    layers = [
      addLayer(repoRoot, `base${n}`, { 'bin/sh': 'shell' }, { converter: true }),
      addLayer(repoRoot, `app${n}`, { 'app/main.py': 'print(1)' }, { converter: true }),
    ];
    sn = await open();
  });
  afterEach(async () => {
    host.unstall();
    await sn.close();
  });

  it('goes with the last snapshot of its stack once the repository has it; an unpublished one stays for the window, then goes', async () => {
    await image('img');
    await image('img-tag2'); // another thin manifest (tag) of the same layers: the same stack
    const mine = local(profile(hexes(), '2026-01-02T00:00:00Z'));
    publish(profile(hexes(), '2026-01-02T00:00:00Z'));
    await sn.prepare('ctr', 'img', {});
    await sn.startsIdle();
    await sn.remove('ctr');
    await sn.remove('img');
    await sn.startsIdle();
    expect(existsSync(mine)).toBe(true); // img-tag2 still has the stack
    await sn.remove('img-tag2');
    await sn.startsIdle();
    expect(existsSync(mine)).toBe(false);
    expect(logs.find((l) => l['msg'] === 'removed a local access profile: no image of its stack is on this node')).toMatchObject({
      file: mine,
      why: 'the repository has it (published) or a newer one',
    });

    // unpublished (the repository's is older: ours replaces it once published): kept while young
    const other = [addLayer(repoRoot, `other${n}`, { 'bin/sh': 'x' }, { converter: true })];
    await image('other', other);
    const unpublished = local(profile([other[0]!.hex], '2026-03-01T00:00:00Z'));
    publish(profile([other[0]!.hex], '2026-02-01T00:00:00Z'));
    await sn.remove('other');
    await sn.startsIdle();
    expect(existsSync(unpublished)).toBe(true);
    // a week later (reopened: the startup sweep), it goes without asking the repository again
    await sn.close();
    const asks = () => host.ops('probeFs').filter((c) => (c.args as string[]).includes(`read ${path.join(repoRoot, profilePath([other[0]!.hex]))}`)).length;
    const asked = asks();
    utimesSync(unpublished, new Date(Date.now() - 8 * DAY), new Date(Date.now() - 8 * DAY));
    sn = await open();
    await sn.startsIdle();
    expect(existsSync(unpublished)).toBe(false);
    expect(asks()).toBe(asked);
    expect(logs.filter((l) => l['file'] === unpublished).map((l) => l['why'])).toEqual(['older than the 168 h it is kept to be published']);
  });

  it('keeps the newest under the cap (files, then bytes), those of images on the node last', async () => {
    await image('img');
    const live = local(profile(hexes()), 10 * 60_000); // the oldest, but its image is here
    const others = [1, 2, 3, 4, 5].map((i) => local(profile(randomStack(i)), (6 - i) * 60_000)); // 1 the oldest
    await sn.close();
    sn = await open({ keep: { maxFiles: 3 } });
    await sn.startsIdle();
    expect([live, ...others].map((f) => existsSync(f))).toEqual([true, false, false, false, true, true]);
    expect(warnings(/^local access profiles over the cap: removed the 3 oldest/)).toHaveLength(1);

    // by bytes: room for the live one and the newest other
    await sn.close();
    sn = await open({ keep: { maxFiles: 100, maxBytes: lstatSync(live).size + lstatSync(others[4]!).size } });
    await sn.startsIdle();
    expect([live, ...others].map((f) => existsSync(f))).toEqual([true, false, false, false, false, true]);
    // its image removed: young and unpublished, and under the cap, both stay
    await sn.remove('img');
    await sn.startsIdle();
    expect([live, others[4]!].map((f) => existsSync(f))).toEqual([true, true]);
  });

  it('never follows a symlink, FIFO or directory in profiles/: left alone, logged once; a start over it prefetches nothing', async () => {
    await sn.close();
    sn = await open({ keep: { maxFiles: 0 } }); // the cap does not reach them either
    const outside = path.join(dir, 'outside.json');
    const outsideText = serializeProfile(profile(hexes()));
    writeFileSync(outside, outsideText);
    mkdirSync(profiles(), { recursive: true });
    const link = path.join(profiles(), `${stackId(hexes())}.json`);
    symlinkSync(outside, link);
    const fifo = path.join(profiles(), `${stackId(randomStack(1))}.json`);
    execFileSync('mkfifo', [fifo]);
    const sub = path.join(profiles(), `${stackId(randomStack(2))}.json`);
    mkdirSync(sub);
    const junk = path.join(profiles(), 'notes.txt');
    writeFileSync(junk, 'not a profile');
    const broken = local(profile(randomStack(3)));
    writeFileSync(broken, '{"schema": "cvmfs-thin/access-profile", "version": 1'); // unparseable: never publishable
    // the image after them: its profile is looked up at its Commit
    await image('img');
    const other = [addLayer(repoRoot, `other${n}`, { 'bin/sh': 'x' }, { converter: true })];
    await image('img2', other);
    await sn.prepare('ctr', 'img', {});
    await sn.startsIdle();
    const t = JSON.parse(readFileSync(traceFile(path.join(root, 'traces'), 'ctr'), 'utf8')) as StartTrace;
    expect(t.profile).toBe(`invalid: ${link} is a symbolic link (left alone)`);
    // the profile, and the hot layer's image probed beside it (hot-image.ts), are not read-ahead
    const reads = host.ops('probeFs').flatMap((c) => (c.args as string[]).filter((a) => a.startsWith('read ') && !/\.(json|erofs|erofs-data)$/.test(a)));
    expect(reads).toEqual([]);
    // two sweeps over them (two images removed): each entry logged once, left where it is
    await sn.remove('ctr');
    await sn.remove('img');
    await sn.startsIdle();
    await sn.remove('img2');
    await sn.startsIdle();
    for (const [f, why] of [
      [link, 'is a symbolic link'],
      [fifo, 'is not a regular file'],
      [sub, 'is a directory'],
      [junk, 'is not named <stack id>.json'],
    ] as const) {
      expect([f, logs.filter((l) => l['file'] === f && String(l['msg']).endsWith(why))]).toEqual([f, [expect.objectContaining({ level: 40 })]]);
      expect(existsSync(f)).toBe(true);
    }
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(outside, 'utf8')).toBe(outsideText);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(existsSync(broken)).toBe(false); // ours by name, no image of it, not a valid profile: it goes
  });

  it('a sweep is never awaited by Remove, Prepare or Commit: they answer while it waits on a stalled repository', async () => {
    await image('img');
    const mine = local(profile(hexes()));
    const asked = `read ${path.join(repoRoot, profilePath(hexes()))}`;
    host.stalled.add(path.join(repoRoot, '.profiles'));
    const answered: string[] = [];
    const removal = sn.remove('img').then(() => answered.push('remove')); // the last snapshot of the stack: a sweep starts
    while (!host.ops('probeFs').some((c) => (c.args as string[]).includes(asked))) await new Promise((r) => setTimeout(r, 5));
    // the sweep is now stuck asking the repository; requests go on
    const other = [addLayer(repoRoot, `other${n}`, { 'bin/sh': 'x' }, { converter: true })];
    await image('other', other);
    const ms = await sn.prepare('ctr', 'other', {});
    expect(ms[0]!.type).toBe('overlay');
    await sn.remove('ctr');
    expect(answered).toEqual(['remove']); // answered while the sweep it started waits
    expect(existsSync(mine)).toBe(true);
    // the repository answers: it has the profile (published meanwhile), so ours goes
    publish(profile(hexes()));
    host.unstall();
    await Promise.all([removal, sn.startsIdle()]);
    expect(existsSync(mine)).toBe(false);
  });
});
