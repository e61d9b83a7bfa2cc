/**
 * `cvmfs-thin rm IMAGE...`: an image's `.metadata` records (every platform),
 * readable links and podman store name go, in one publishing session; its
 * layers stay until `gc`. Hostile cases: an image that is not there, a
 * malformed reference, a failing transaction hook, a converter holding the
 * publishing lock or the podman store: each refused, naming it, with nothing
 * removed.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/core/telemetry/log.js';
import { collectGarbage } from '../../src/convert/gc.js';
import { acquireLock } from '../../src/core/state/lock.js';
import { addImageToPodmanStore, checkPodmanStore } from '../../src/convert/podman/index.js';
import { Publisher } from '../../src/convert/publish.js';
import { removeImages } from '../../src/convert/remove.js';
import { CLI, tempDir } from '../helpers/env.js';
import { fakeImage, type FakeImage, readJson } from '../podman/tree.js';
import { json, runCli } from './cli.js';
import { systemHost } from '../../src/core/host/host.js';

const work = tempDir('cvmfs-thin-rm-');
const log = createLogger('error', 'test-rm');
let n = 0;

/** A tree with two images sharing a base layer, in the store, with readable links; `app:1` also on a second platform. */
async function tree(): Promise<{ repo: string; a: FakeImage; b: FakeImage }> {
  const repo = path.join(work, `repo${n++}`);
  fs.mkdirSync(repo);
  const a = fakeImage(repo, 'registry.example.org/team/app:1', [{ seed: 'base' }, { seed: 'a' }]);
  const b = fakeImage(repo, 'registry.example.org/team/other:2', [{ seed: 'base' }, { seed: 'b' }]);
  await addImageToPodmanStore(repo, a.input, { host: systemHost });
  await addImageToPodmanStore(repo, b.input, { host: systemHost });
  const arm = path.join(repo, '.metadata', '.multiarch', 'linux-arm64', 'registry.example.org', 'team', 'app:1');
  fs.mkdirSync(arm, { recursive: true });
  fs.copyFileSync(path.join(repo, '.metadata', 'registry.example.org', 'team', 'app:1', 'manifest.json'), path.join(arm, 'manifest.json'));
  for (const [link, flat] of [
    ['registry.example.org/team/app:1', '.flat/aa/a'],
    ['.multiarch/linux-arm64/registry.example.org/team/app:1', '.flat/aa/a-arm'],
    ['registry.example.org/team/other:2', '.flat/bb/b'],
  ]) {
    fs.mkdirSync(path.dirname(path.join(repo, link!)), { recursive: true });
    fs.symlinkSync(path.relative(path.dirname(path.join(repo, link!)), path.join(repo, flat!)), path.join(repo, link!));
  }
  return { repo, a, b };
}

/** Every path of the tree with its type, size and mtime: "nothing changed" is checked against this. */
function state(repo: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((x, y) => x.name.localeCompare(y.name))) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(repo, p)} ${st.mode} ${st.size} ${st.mtimeMs}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(repo);
  return out;
}
const exists = (repo: string, rel: string) =>
  fs.existsSync(path.join(repo, rel)) || fs.lstatSync(path.join(repo, rel), { throwIfNoEntry: false }) !== undefined;
const storeNames = (repo: string) =>
  readJson<{ names?: string[] }[]>(path.join(repo, 'podmanStore', 'overlay-images', 'images.json')).flatMap((i) => i.names ?? []);
const plain = (repo: string) => new Publisher({ hooks: {}, repository: 'test.example.org', repositoryDir: repo, log, host: systemHost });

describe('rm', () => {
  it('removes the records of every platform, the links and the store entry; layers stay until gc', async () => {
    const { repo, a, b } = await tree();
    const r = await removeImages({ repositoryDir: repo, images: ['docker://registry.example.org/team/app:1'], dryRun: false, log, publisher: plain(repo) });
    expect(r.removed).toEqual([
      {
        image: 'docker://registry.example.org/team/app:1',
        tree_name: 'registry.example.org/team/app:1',
        metadata: ['.metadata/registry.example.org/team/app:1', '.metadata/.multiarch/linux-arm64/registry.example.org/team/app:1'],
        links: ['registry.example.org/team/app:1', '.multiarch/linux-arm64/registry.example.org/team/app:1'],
        podman_name: 'registry.example.org/team/app:1',
      },
    ]);
    expect(r.podman).toMatchObject({ removed_images: [a.configDigest.slice(7)], removed_layers: [expect.any(String)] });
    for (const gone of ['.metadata/registry.example.org/team/app:1', '.metadata/.multiarch', 'registry.example.org/team/app:1', '.multiarch'])
      expect(exists(repo, gone), gone).toBe(false);
    // the other image is untouched
    expect(exists(repo, '.metadata/registry.example.org/team/other:2/manifest.json')).toBe(true);
    expect(fs.readlinkSync(path.join(repo, 'registry.example.org/team/other:2'))).toBe('../../.flat/bb/b');
    expect(storeNames(repo)).toEqual(['registry.example.org/team/other:2']);
    expect(await checkPodmanStore(repo)).toEqual({ images: 1, layers: 2, problems: [] });
    // layers: still there, until gc finds them unreferenced
    const aTop = path.join(repo, '.layers', a.layers[1]!.digest.slice(7, 9), a.layers[1]!.digest.slice(7));
    expect(fs.existsSync(aTop)).toBe(true);
    const gc = await collectGarbage({ repositoryDir: repo, graceMs: 0, dryRun: false, log, publisher: plain(repo) });
    expect(gc.errors).toEqual([]);
    expect(gc.removed.map((x) => x.path)).toEqual([aTop]);
    expect(fs.existsSync(path.join(repo, '.layers', b.layers[1]!.digest.slice(7, 9), b.layers[1]!.digest.slice(7)))).toBe(true);
  });

  it('an image with another name in the store keeps its store entry; a dry run changes nothing', async () => {
    const { repo, a } = await tree();
    await addImageToPodmanStore(repo, { ...a.input, names: ['registry.example.org/team/app:latest'] }, { host: systemHost });
    const before = state(repo);
    const dry = await removeImages({ repositoryDir: repo, images: ['registry.example.org/team/app:1'], dryRun: true, log, publisher: plain(repo) });
    expect(dry).toMatchObject({
      dry_run: true,
      removed: [{ tree_name: 'registry.example.org/team/app:1' }],
      podman: { removed_images: [], removed_layers: [] },
    });
    expect(state(repo)).toEqual(before);
    await removeImages({ repositoryDir: repo, images: ['registry.example.org/team/app:1'], dryRun: false, log, publisher: plain(repo) });
    expect(storeNames(repo).sort()).toEqual(['registry.example.org/team/app:latest', 'registry.example.org/team/other:2']);
  });

  it.each([
    [
      'an image that is not there (beside one that is)',
      ['registry.example.org/team/app:1', 'registry.example.org/team/app:2'],
      'CVMFS_THIN_IMAGE_NOT_FOUND',
      /registry\.example\.org\/team\/app:2 .*is not in .*nothing was removed/,
    ],
    ['a repository name in capitals', ['registry.example.org/Team/app:1'], 'CVMFS_THIN_BAD_REFERENCE', /must be lower case/],
    ['a path that climbs', ['registry.example.org/../../etc:1'], 'CVMFS_THIN_BAD_REFERENCE', /not valid/],
    ['a bad tag', ['registry.example.org/team/app:-x'], 'CVMFS_THIN_BAD_REFERENCE', /tag "-x" is not valid/],
    ['an empty name', [''], 'CVMFS_THIN_BAD_REFERENCE', /empty/],
    ['no name at all', [], 'CVMFS_THIN_BAD_FLAG', /name at least one image/],
  ])('refuses %s, naming it; nothing is removed', async (_what, images, code, re) => {
    const { repo } = await tree();
    const before = state(repo);
    const err = await removeImages({ repositoryDir: repo, images, dryRun: false, log, publisher: plain(repo) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code });
    expect((err as Error).message).toMatch(re);
    expect(state(repo)).toEqual(before);
  });

  it('refuses a repository directory that does not exist', async () => {
    const missing = path.join(work, 'no-such-repo');
    await expect(removeImages({ repositoryDir: missing, images: ['registry.example.org/a:1'], dryRun: false, log, publisher: plain(missing) })).rejects.toThrow(
      /does not exist/,
    );
  });
});

describe('cvmfs-thin rm (the command)', () => {
  it('runs inside the transaction hooks, prints JSON; exit codes 1 (not found) and 2 (malformed) with the reason on stderr', async () => {
    const { repo } = await tree();
    const hooks = path.join(work, `hooks-${n}.log`);
    const hook = (step: string) => `sh -c "echo ${step} >> ${hooks}"`;
    const r = await runCli([
      'rm',
      'registry.example.org/team/other:2',
      '--repository-dir',
      repo,
      '--transaction-command',
      hook('transaction'),
      '--publish-command',
      hook('publish'),
      '--lock-file',
      path.join(work, 'lock'),
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(json<{ removed: { tree_name: string }[]; publish_steps: { step: string; ok: boolean }[] }>(r)).toMatchObject({
      removed: [{ tree_name: 'registry.example.org/team/other:2' }],
      publish_steps: [
        { step: 'transaction', ok: true },
        { step: 'publish', ok: true },
      ],
    });
    expect(fs.readFileSync(hooks, 'utf8')).toBe('transaction\npublish\n');
    const missing = await runCli(['rm', 'registry.example.org/team/other:2', '--repository-dir', repo]);
    expect([missing.code, missing.stderr]).toEqual([1, expect.stringMatching(/^cvmfs-thin: rm: registry\.example\.org\/team\/other:2 .* is not in /)]);
    const bad = await runCli(['rm', 'registry.example.org/X:1', '--repository-dir', repo]);
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringMatching(/^cvmfs-thin: image reference "registry\.example\.org\/X:1": .*lower case/)]);
    const human = await runCli(['rm', 'registry.example.org/team/app:1', '--repository-dir', repo, '--dry-run']);
    expect(human.stdout).toMatch(
      /^would remove registry\.example\.org\/team\/app:1: \.metadata\/registry\.example\.org\/team\/app:1, .*podman store name registry\.example\.org\/team\/app:1\n/,
    );
    expect(human.stderr).toMatch(/stay until cvmfs-thin gc/);
  });

  it('a failing transaction hook: nothing is removed, exit 1', async () => {
    const { repo } = await tree();
    const before = state(repo);
    const r = await runCli([
      'rm',
      'registry.example.org/team/app:1',
      '--repository-dir',
      repo,
      '--transaction-command',
      'false',
      '--lock-file',
      path.join(work, 'lock'),
    ]);
    expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/transaction hook "false" failed/)]);
    expect(state(repo)).toEqual(before);
  });

  it('while a converter holds the publishing lock: waits, or gives up after --lock-timeout with nothing removed', async () => {
    const { repo } = await tree();
    const lockFile = path.join(work, `publish-${n}.lock`);
    const held = await acquireLock(lockFile, { host: systemHost });
    const args = [
      'rm',
      'registry.example.org/team/app:1',
      '--repository-dir',
      repo,
      '--transaction-command',
      'true',
      '--publish-command',
      'true',
      '--lock-file',
      lockFile,
    ];
    try {
      const before = state(repo);
      const t0 = Date.now();
      const r = await runCli([...args, '--lock-timeout', '1s']);
      expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/still held by another process after 1000 ms/)]);
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(state(repo)).toEqual(before);
      // without a timeout it waits for the lock, then removes
      const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
      await new Promise((res) => setTimeout(res, 1500));
      expect(child.exitCode).toBeNull();
      expect(exists(repo, '.metadata/registry.example.org/team/app:1')).toBe(true);
      held.release();
      expect(await exited).toBe(0);
      expect(exists(repo, '.metadata/registry.example.org/team/app:1')).toBe(false);
    } finally {
      held.release();
    }
  });

  it('while a converter updates the podman store: gives up after --lock-timeout, before anything else is removed', async () => {
    const { repo } = await tree();
    const held = await acquireLock(path.join(repo, 'podmanStore', 'overlay-layers', 'layers.lock'), { host: systemHost });
    try {
      const before = state(repo);
      const r = await runCli(['rm', 'registry.example.org/team/app:1', '--repository-dir', repo, '--lock-timeout', '1s']);
      expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/layers\.lock: still held by another process after 1000 ms/)]);
      expect(state(repo)).toEqual(before);
    } finally {
      held.release();
    }
  });
});
