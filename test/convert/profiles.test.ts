/**
 * `cvmfs-thin profile` (publish, disable, show) on a repository tree, as a
 * publisher would run it: profiles validated before anything is written,
 * written under .profiles/ in one session of the publishing hooks, an
 * opt-out for a converted image, hostile files refused naming the field.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { PROFILE_SCHEMA, profilePath, serializeProfile, type AccessProfile } from '../../src/core/thin/profile.js';
import { duccImageName, parseDockerReference } from '../../src/convert/reference.js';
import { tempDir } from '../helpers/env.js';
import { runCli } from './cli.js';

const H = (c: string) => c.repeat(64);
const prof = (layers: string[], files: AccessProfile['files']): AccessProfile => ({
  schema: PROFILE_SCHEMA,
  version: 1,
  layers,
  prefetch: true,
  created: '2026-12-06T10:00:00Z',
  source: 'test',
  files,
});

describe('cvmfs-thin profile', () => {
  const dir = tempDir('profile-cli-');
  const repo = path.join(dir, 'unpacked.cern.ch');
  mkdirSync(repo);
  const file = (name: string, content: string) => {
    const f = path.join(dir, name);
    writeFileSync(f, content);
    return f;
  };
  const hooksLog = path.join(dir, 'hooks.log');
  const hooks = [
    '--transaction-command',
    `sh -c "echo tx >> ${hooksLog}"`,
    '--publish-command',
    `sh -c "echo publish >> ${hooksLog}"`,
    '--abort-command',
    `sh -c "echo abort >> ${hooksLog}"`,
    '--lock-file',
    path.join(dir, 'lock'),
  ];

  it('publishes valid profiles in one transaction; show prints them', async () => {
    const a = file(
      'a.json',
      serializeProfile(
        prof(
          [H('a'), H('b')],
          [
            { path: 'bin/sh', layer: H('a'), size: 2048, at: 1 },
            { path: 'app/x.py', layer: H('b'), size: 10 },
          ],
        ),
      ),
    );
    const b = file('b.json', serializeProfile(prof([H('c')], [])));
    const r = await runCli(['profile', 'publish', '--repository-dir', repo, ...hooks, a, b]);
    expect([r.code, r.stderr]).toEqual([0, expect.stringContaining('wrote 2 profile(s)')]);
    expect(r.stdout).toBe(`wrote ${profilePath([H('a'), H('b')])}: 2 file(s), 2 KiB\nwrote ${profilePath([H('c')])}: 0 file(s), 0 KiB\n`);
    expect(readFileSync(hooksLog, 'utf8')).toBe('tx\npublish\n');
    expect(JSON.parse(readFileSync(path.join(repo, profilePath([H('a'), H('b')])), 'utf8'))).toMatchObject({
      files: [{ path: 'bin/sh' }, { path: 'app/x.py' }],
    });
    expect(existsSync(path.join(repo, '.profiles', '.cvmfscatalog'))).toBe(true);
    const again = await runCli(['profile', 'publish', '--repository-dir', repo, '--dry-run', a]);
    expect(again.stdout).toBe(`would write ${profilePath([H('a'), H('b')])}: 2 file(s), 2 KiB (replacing one of 2 file(s))\n`);
    const show = await runCli(['profile', 'show', a]);
    expect(show.stdout).toMatch(
      /^stack [0-9a-f]{64} \(2 layer\(s\)\), created 2026-12-06T10:00:00Z, test\nprefetch: 2 file\(s\), 2 KiB\n {7}1 ms {8}2048 {2}bin\/sh\n {7}- {13}10 {2}app\/x\.py\n$/,
    );
  });

  it('refuses a hostile or broken profile before any transaction, naming the file and field', async () => {
    const before = readFileSync(hooksLog, 'utf8');
    const good = file('good.json', serializeProfile(prof([H('d')], [])));
    const cases: [string, RegExp][] = [
      [
        serializeProfile(prof([H('e')], [{ path: '../../etc/cron.d/x', size: 1 }])),
        /evil\.json: access profile: files\[0\]\.path: "\.\.\/\.\.\/etc\/cron\.d\/x" is not a normalised path/,
      ],
      ['{"schema": 1}', /evil\.json: access profile: schema: must be "cvmfs-thin\/access-profile"/],
      ['not json', /evil\.json: access profile: file: is not valid JSON/],
    ];
    for (const [text, err] of cases) {
      const evil = file('evil.json', text);
      const r = await runCli(['profile', 'publish', '--repository-dir', repo, ...hooks, good, evil]);
      expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(err)]);
    }
    const missing = await runCli(['profile', 'publish', '--repository-dir', repo, path.join(dir, 'nope.json')]);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringMatching(/profile .*nope\.json: ENOENT/)]);
    expect(readFileSync(hooksLog, 'utf8')).toBe(before);
    expect(existsSync(path.join(repo, profilePath([H('d')])))).toBe(false);
  });

  it('disable: a converted image gets an opt-out profile; an image not converted is refused', async () => {
    const meta = path.join(repo, '.metadata', duccImageName(parseDockerReference('python:3.12')));
    mkdirSync(meta, { recursive: true });
    writeFileSync(
      path.join(meta, 'cvmfs-thin.json'),
      JSON.stringify({ schema: 'cvmfs-thin/image', version: 1, layers: [`sha256:${H('1')}`, `sha256:${H('2')}`] }),
    );
    const r = await runCli(['profile', 'disable', '--repository-dir', repo, 'python:3.12']);
    expect([r.code, r.stdout]).toEqual([0, `wrote ${profilePath([H('1'), H('2')])}: prefetch disabled\n`]);
    expect(JSON.parse(readFileSync(path.join(repo, profilePath([H('1'), H('2')])), 'utf8'))).toMatchObject({
      prefetch: false,
      files: [],
      layers: [H('1'), H('2')],
    });
    const miss = await runCli(['profile', 'disable', '--repository-dir', repo, 'python:3.13']);
    expect([miss.code, miss.stderr]).toEqual([1, expect.stringMatching(/image python:3\.13 is not converted in/)]);
  });
});
