/**
 * `cvmfs-thin profile` (publish, disable, show) on a repository tree, as a
 * publisher would run it: profiles validated before anything is written,
 * written under .profiles/ in one session of the publishing hooks, an
 * opt-out for a converted image, hostile files refused naming the field;
 * each profile's pack and EROFS image (mounted as the kernel shows it).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readErofsHead } from '../../src/core/fs/erofs.js';
import * as sys from '../../src/core/host/sys.js';
import {
  imageDataPath,
  imagePath,
  packPath,
  parseProfile,
  PROFILE_SCHEMA,
  profilePath,
  serializeProfile,
  type AccessProfile,
} from '../../src/core/thin/profile.js';
import { addLayer } from '../helpers/cvmfs-tree.js';
import { duccImageName, parseDockerReference } from '../../src/convert/reference.js';
import { needs, tempDir } from '../helpers/env.js';
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

  it.skipIf(needs({ root: 'an overlay whiteout (mknod)' }))(
    "writes each profile's pack beside it (the files as the stack shows them), named in the profile; --no-pack removes it",
    async () => {
      const l1 = addLayer(repo, 'pk1', { 'app/x.py': 'print(1)\n', 'app/old': 'o' });
      const l2 = addLayer(repo, 'pk2', { 'app/y.py': 'y', 'app/old': { whiteout: true } }, { converter: true });
      const layers = [l1.hex, l2.hex];
      const f = file(
        'pk.json',
        serializeProfile(
          prof(layers, [
            { path: 'app/x.py', layer: l1.hex, size: 9 },
            { path: 'app/old', layer: l1.hex, size: 1 },
            { path: 'app/y.py', layer: l2.hex, size: 1 },
          ]),
        ),
      );
      const r = await runCli(['profile', 'publish', '--repository-dir', repo, ...hooks, f]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/: 3 file\(s\), 0 KiB; pack of 2 file\(s\), \d+ KiB \(1 left out\), image \d+ \+ \d+ KiB\n$/);
      const pack = path.join(repo, packPath(layers));
      const image = path.join(repo, imagePath(layers));
      const data = path.join(repo, imageDataPath(layers));
      const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
      const profileNow = () => parseProfile(readFileSync(path.join(repo, profilePath(layers)), 'utf8'));
      const written = profileNow();
      expect(written.pack).toEqual({ bytes: statSync(pack).size, sha256: sha(pack), files: 2 });
      expect(written.image).toEqual({
        bytes: statSync(image).size,
        sha256: sha(image),
        files: 2,
        uuid: expect.stringMatching(/^[0-9a-f]{32}$/),
        data: { bytes: statSync(data).size, sha256: sha(data) },
      });
      expect(readErofsHead(readFileSync(image).subarray(0, 2048))).toEqual({
        bytes: written.image!.bytes,
        dataBytes: written.image!.data.bytes,
        uuid: written.image!.uuid,
      });
      const names = execFileSync('tar', ['-tf', pack], { encoding: 'utf8' }).split('\n').filter(Boolean).sort();
      expect(names).toEqual(['./', 'app/', 'app/x.py', 'app/y.py']);
      // the image holds what the pack holds, as the kernel shows it
      const mnt = path.join(dir, 'image-mnt');
      mkdirSync(mnt);
      sys.mount(image, mnt, 'erofs', sys.MS_RDONLY, `device=${data}`);
      try {
        expect(readdirSync(path.join(mnt, 'app')).sort()).toEqual(['x.py', 'y.py']);
        expect(readFileSync(path.join(mnt, 'app/x.py'), 'utf8')).toBe('print(1)\n');
        expect(statSync(path.join(mnt, 'app/x.py')).mtimeMs).toBe(statSync(path.join(l1.dir, 'app/x.py')).mtimeMs);
      } finally {
        sys.umount(mnt);
      }
      const noImage = await runCli(['profile', 'publish', '--repository-dir', repo, '--no-image', f]);
      expect(noImage.code, noImage.stderr).toBe(0);
      expect([existsSync(pack), existsSync(image), existsSync(data), profileNow().image]).toEqual([true, false, false, undefined]);
      const off = await runCli(['profile', 'publish', '--repository-dir', repo, '--no-pack', f]);
      expect(off.code, off.stderr).toBe(0);
      expect([existsSync(pack), profileNow().pack]).toEqual([false, undefined]);
    },
  );

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
