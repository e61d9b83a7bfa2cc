/**
 * `cvmfs-thin gc` and access profiles (thin-image/SPEC.md §8): a profile goes
 * with its stack's layers (an opt-out too), an unreferenced one after the
 * grace period, in the same publishing session; anything under `.profiles`
 * that is not a valid profile named by its stack — symlinks, other files,
 * FIFOs, a bucket linking elsewhere — is reported and left as it was, and
 * nothing outside `.profiles` is touched.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { layerDir } from '../../src/core/cvmfs/layout.js';
import { PROFILE_SCHEMA, profilePath, serializeProfile, stackId } from '../../src/core/thin/profile.js';
import { needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { type BuiltLayer, buildLayer, writeLayout } from './images.js';

interface GcItem {
  kind: string;
  path: string;
  why?: string;
}
interface GcReport {
  dry_run: boolean;
  removed: GcItem[];
  kept_recent: GcItem[];
  left_alone: { path: string; reason: string }[];
  errors: unknown[];
  publish_steps: { step: string; ok: boolean }[];
}

const hex = (l: BuiltLayer) => l.digest.slice(7);
const profileText = (layers: string[]) =>
  serializeProfile({ schema: PROFILE_SCHEMA, version: 1, layers, prefetch: true, created: '2026-01-02T03:04:05Z', files: [{ path: 'etc/one', size: 4 }] });

describe.skipIf(needs({ binaries: ['tar', 'gzip', 'mkfifo'] }))('gc and access profiles', () => {
  const work = tempDir('cvmfs-thin-gc-profiles-');
  const repo = path.join(work, 'repo');
  const outside = path.join(work, 'outside');
  const marks = path.join(work, 'marks');
  const ls: BuiltLayer[] = [];
  /** Profile files by role. */
  const p: Record<string, string> = {};
  /** Hostile entries and what gc must say about them. */
  const hostile: [string, RegExp][] = [];
  let orphanPack = '';
  let orphanImage = '';
  const inRepo = (layers: string[]) => path.join(repo, profilePath(layers));
  const write = (file: string, text: string) => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
  };
  const old = (f: string) => {
    const t = new Date(Date.now() - 3 * 86_400_000);
    fs.utimesSync(f, t, t);
  };
  const gc = async (...extra: string[]) => {
    const r = await runCli(['gc', '--repository-dir', repo, '--grace', '2d', '--json', ...extra]);
    expect(r.code, r.stderr).toBe(0);
    return json<GcReport>(r);
  };
  const profiles = (items: GcItem[]) =>
    items
      .filter((x) => x.kind === 'profile')
      .map((x) => x.path)
      .sort();
  const hooks = ['--transaction-command', `touch ${marks}/tx`, '--publish-command', `touch ${marks}/pub`, '--lock-file', path.join(work, 'lock')];

  beforeAll(async () => {
    for (const name of ['one', 'two', 'three', 'four']) {
      const st = path.join(work, `st-${name}`);
      fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
      fs.writeFileSync(path.join(st, 'etc', name), `${name}\n`);
      ls.push(buildLayer(st, 'gzip', path.join(work, 'blobs'), name));
    }
    const [l1, l2, l3, l4] = ls as [BuiltLayer, BuiltLayer, BuiltLayer, BuiltLayer];
    fs.mkdirSync(repo);
    fs.mkdirSync(marks);
    for (const [tag, layers] of [
      ['a', [l1, l2]],
      ['b', [l1, l3]],
      ['c', [l1, l4]],
    ] as const) {
      const lay = path.join(work, `lay-${tag}`);
      writeLayout(lay, tag, [{ layers: [...layers], config: { Env: [`T=${tag}`] } }]);
      const r = await runCli(['convert', `oci:${lay}:${tag}`, '--repository-dir', repo, '--name', `example.org/app:${tag}`, '--no-thin']);
      expect(r.code, r.stderr).toBe(0);
    }
    const [h1, h2, h3, h4] = ls.map(hex) as [string, string, string, string];
    // a (kept: its image is there), b (recorded), c (opted out), and a stack no image has
    p['a'] = inRepo([h1, h2]);
    p['b'] = inRepo([h1, h3]);
    p['c'] = inRepo([h1, h4]);
    p['lone'] = inRepo([h1]);
    write(p['a'], profileText([h1, h2]));
    write(p['b'], profileText([h1, h3]));
    write(p['lone'], profileText([h1]));
    const dis = await runCli(['profile', 'disable', 'example.org/app:c', '--repository-dir', repo]);
    expect(dis.code, dis.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(p['c'], 'utf8'))).toMatchObject({ prefetch: false, layers: [h1, h4] });
    // images b and c are deleted from the tree; their own layers are old
    for (const t of ['b', 'c']) {
      fs.rmSync(path.join(repo, `.metadata/example.org/app:${t}`), { recursive: true });
      fs.rmSync(path.join(repo, `example.org/app:${t}`), { force: true });
    }
    old(layerDir(repo, h3));
    old(layerDir(repo, h4));

    // hostile entries, each naming a stack whose layers are gone (removable if gc followed them)
    const buckets = new Set(Object.values(p).map((f) => path.basename(path.dirname(f))));
    const gone = [[h3], [h4], [h3, h4], [h4, h3], [h2, h3], [h2, h4], [h3, h2], [h4, h2], [h1, h3, h4], [h1, h4, h3]];
    const take = () => {
      const i = gone.findIndex((s) => !buckets.has(stackId(s).slice(0, 2)));
      const s = gone.splice(i, 1)[0]!;
      buckets.add(stackId(s).slice(0, 2));
      return s;
    };
    const link = take(); // a symlink to a valid profile outside
    write(path.join(outside, 'victim.json'), profileText(link));
    fs.mkdirSync(path.dirname(inRepo(link)), { recursive: true });
    fs.symlinkSync(path.join(outside, 'victim.json'), inRepo(link));
    hostile.push([inRepo(link), /symbolic link/]);
    const bucketStack = take(); // a <xx> directory that is a symlink to a directory outside
    const bucket = path.dirname(inRepo(bucketStack));
    write(path.join(outside, 'bucket', path.basename(inRepo(bucketStack))), profileText(bucketStack));
    fs.symlinkSync(path.join(outside, 'bucket'), bucket);
    hostile.push([bucket, /symbolic link/]);
    const aDir = path.dirname(p['a']);
    const sameBucket = (tail: string) => path.join(aDir, `${path.basename(aDir)}${tail.repeat(62)}.json`);
    write(sameBucket('0'), '{ not json');
    hostile.push([sameBucket('0'), /not valid JSON/]);
    write(sameBucket('1'), profileText([h1, h3])); // a valid profile under another stack's name
    hostile.push([sameBucket('1'), /another stack/]);
    execFileSync('mkfifo', [sameBucket('2')]);
    hostile.push([sameBucket('2'), /not a regular file/]);
    fs.mkdirSync(sameBucket('3'));
    hostile.push([sameBucket('3'), /not a regular file/]);
    write(sameBucket('4'), '');
    fs.truncateSync(sameBucket('4'), (8 << 20) + 1);
    hostile.push([sameBucket('4'), /larger than/]);
    // packs (profile publish): with their profile, or without one (it went: the pack goes); a symlinked one is left alone
    write(p['a']!.replace(/\.json$/, '.pack'), 'pack of a');
    write(p['b']!.replace(/\.json$/, '.pack'), 'pack of b');
    // and images (metadata and data files) the same
    write(p['a']!.replace(/\.json$/, '.erofs-data'), 'image data of a');
    for (const sfx of ['.erofs', '.erofs-data']) write(p['b']!.replace(/\.json$/, sfx), `image of b${sfx}`);
    orphanPack = path.join(aDir, `${path.basename(aDir)}${'5'.repeat(62)}.pack`);
    write(orphanPack, 'pack without a profile');
    orphanImage = path.join(aDir, `${path.basename(aDir)}${'7'.repeat(62)}.erofs-data`);
    write(orphanImage, 'image data without a profile');
    fs.symlinkSync(path.join(outside, 'victim.json'), path.join(aDir, `${path.basename(aDir)}${'6'.repeat(62)}.pack`));
    hostile.push([path.join(aDir, `${path.basename(aDir)}${'6'.repeat(62)}.pack`), /symbolic link/]);
    write(path.join(aDir, 'notes.txt'), 'hello');
    hostile.push([path.join(aDir, 'notes.txt'), /not named/]);
    write(path.join(repo, '.profiles', 'README'), 'hello');
    hostile.push([path.join(repo, '.profiles', 'README'), /not a profile directory/]);
  });

  it('--dry-run lists the profiles of gone layers (an opt-out too) and keeps a young unreferenced one; hostile entries are reported', async () => {
    const g = await gc('--dry-run');
    expect(profiles(g.removed)).toEqual([p['b']!, p['c']!, orphanPack, orphanImage].sort());
    expect(g.removed.find((x) => x.path === orphanPack)?.why).toBe('the pack or image of a profile that is gone');
    expect(g.removed.find((x) => x.path === orphanImage)?.why).toBe('the pack or image of a profile that is gone');
    expect(g.removed.find((x) => x.path === p['b'])?.why).toMatch(new RegExp(`layer ${hex(ls[2]!).slice(0, 12)} is gone`));
    expect(g.removed.find((x) => x.path === p['c'])?.why).toMatch(new RegExp(`layer ${hex(ls[3]!).slice(0, 12)} is gone`));
    expect(profiles(g.kept_recent)).toEqual([p['lone']!]);
    expect(g.left_alone.map((l) => l.path).sort()).toEqual(hostile.map(([f]) => f).sort());
    for (const [f, why] of hostile) expect(g.left_alone.find((l) => l.path === f)?.reason, f).toMatch(why);
    for (const f of Object.values(p)) expect(fs.existsSync(f), f).toBe(true);
    const text = await runCli(['gc', '--repository-dir', repo, '--grace', '2d', '--dry-run']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`would remove profile ${p['b']} (its layer ${hex(ls[2]!).slice(0, 12)} is gone; unchanged for `);
    expect(text.stderr).toContain(`cvmfs-thin: left alone ${path.join(repo, '.profiles', 'README')}: is not a profile directory`);
  });

  it('removes them with their layers in one publishing session, leaves hostile entries and everything outside as they were', async () => {
    const snap = () =>
      [...hostile.map(([f]) => f), path.join(outside, 'victim.json'), path.join(outside, 'bucket')].map((f) => {
        const st = fs.lstatSync(f, { bigint: true });
        return `${f} ${st.ino} ${st.mode} ${st.size} ${st.mtimeNs}`;
      });
    const before = snap();
    const outsideFiles = fs.readdirSync(path.join(outside, 'bucket'));
    const g = await gc(...hooks);
    expect(profiles(g.removed)).toEqual([p['b']!, p['c']!, orphanPack, orphanImage].sort());
    const gone = [...['.pack', '.erofs', '.erofs-data'].map((sfx) => p['b']!.replace(/\.json$/, sfx)), orphanPack, orphanImage];
    expect(gone.map((f) => fs.existsSync(f))).toEqual(gone.map(() => false));
    expect(fs.readFileSync(p['a']!.replace(/\.json$/, '.pack'), 'utf8')).toBe('pack of a');
    expect(fs.readFileSync(p['a']!.replace(/\.json$/, '.erofs-data'), 'utf8')).toBe('image data of a');
    expect(
      g.removed
        .filter((x) => x.kind === 'layer')
        .map((x) => x.path)
        .sort(),
    ).toEqual([layerDir(repo, hex(ls[2]!)), layerDir(repo, hex(ls[3]!))].sort());
    expect(g.publish_steps.map((s) => s.step)).toEqual(['transaction', 'publish']);
    expect(g.errors).toEqual([]);
    expect(fs.existsSync(p['b']!)).toBe(false);
    expect(fs.existsSync(p['c']!)).toBe(false);
    for (const k of ['a', 'lone']) expect(fs.existsSync(p[k]!), k).toBe(true);
    expect(snap()).toEqual(before);
    expect(fs.readdirSync(path.join(outside, 'bucket'))).toEqual(outsideFiles);
    expect(g.left_alone).toHaveLength(hostile.length);
  });

  it('an unreferenced profile goes after the grace period, alone in its own session', async () => {
    old(p['lone']!);
    for (const f of fs.readdirSync(marks)) fs.rmSync(path.join(marks, f));
    const g = await gc(...hooks);
    expect(g.removed.map((x) => [x.kind, x.path, x.why])).toEqual([['profile', p['lone'], 'no image has its layers']]);
    expect(fs.readdirSync(marks).sort()).toEqual(['pub', 'tx']);
    expect(fs.existsSync(p['lone']!)).toBe(false);
    expect(fs.existsSync(p['a']!)).toBe(true);
    // nothing left to remove: the next gc opens no session
    for (const f of fs.readdirSync(marks)) fs.rmSync(path.join(marks, f));
    expect((await gc(...hooks)).removed).toEqual([]);
    expect(fs.readdirSync(marks)).toEqual([]);
  });

  it('a .profiles that is a symbolic link is reported and not followed', async () => {
    const real = path.join(repo, '.profiles');
    const aside = path.join(work, 'profiles-aside');
    fs.renameSync(real, aside);
    const elsewhere = path.join(outside, 'profiles');
    write(path.join(elsewhere, path.relative('.profiles', profilePath([hex(ls[2]!)]))), profileText([hex(ls[2]!)]));
    fs.symlinkSync(elsewhere, real);
    try {
      const g = await gc();
      expect(g.left_alone).toEqual([{ path: real, reason: 'is a symbolic link' }]);
      expect(g.removed).toEqual([]);
      expect(fs.existsSync(path.join(elsewhere, path.relative('.profiles', profilePath([hex(ls[2]!)]))))).toBe(true);
    } finally {
      fs.rmSync(real);
      fs.renameSync(aside, real);
    }
  });
});
