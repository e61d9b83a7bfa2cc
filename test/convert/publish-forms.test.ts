/**
 * Which layer form the converter writes when it publishes, and what a user
 * gets when a publish fails: forms a CVMFS publish would destroy are refused
 * before any transaction; a corrupt or mismatching layer streamed to the
 * ingest hook never reaches the repository; layers over the catalog limit
 * get nested catalogs no container sees; merged trees (--chains --flat)
 * built from record layers in a transaction are containerd's rootfs.
 * Publishing goes through the Stratum-0 simulator (test/helpers/cvmfs-sim).
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FS_MAGIC } from '../../src/core/host/host.js';
import { InvalidArgumentError } from '../../src/core/errors/errors.js';
import { duccChainIds, parseLayerMarker } from '../../src/core/cvmfs/layout.js';
import { mount, MNT_DETACH, umount } from '../../src/core/host/sys.js';
import { TarParser } from '../../src/core/tar/parser.js';
import { type LayerForm, resolveLayerForm } from '../../src/convert/whiteouts.js';
import { needs, tempDir } from '../helpers/env.js';
import { simCommand } from '../helpers/cvmfs-sim/command.js';
import { applytoolMissing, buildThreeLayerImage, referenceRootfs, type ThreeLayerImage } from '../helpers/cvmfs-sim/image-fixture.js';
import { catalogEntries, simPaths, transactionOpen } from '../helpers/cvmfs-sim/sim.js';
import { mountPublishedStack } from '../helpers/cvmfs-sim/stack.js';
import { newSim, simBase } from '../helpers/cvmfs-sim/testing.js';
import { hardLinkGroups, treeDiff, treeSnapshot } from '../helpers/cvmfs-sim/tree-diff.js';
import { json, runCli } from './cli.js';
import { buildLayer, type BuiltLayer, writeLayout } from './images.js';

const REPO = 'test.example.org';
const EXT4 = 0xef53;

interface Summary {
  images: { status: string; error: { code: string; message: string } | null; layers: { digest: string; status: string }[] }[];
  failed: number;
  publish_steps: { step: string; ok: boolean }[];
}

function refusal(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidArgumentError);
    expect((e as InvalidArgumentError).code).toBe('CVMFS_THIN_CANNOT_PUBLISH');
    return e as InvalidArgumentError;
  }
  throw new Error('not refused');
}

describe('resolveLayerForm', () => {
  const dir = '/srv/repo';
  const plain = () => EXT4;
  const union = () => FS_MAGIC.OVERLAY;
  const ctx = (o: { transaction?: boolean; ingest?: boolean } = {}) => ({ transaction: o.transaction ?? false, ingest: o.ingest ?? false, repositoryDir: dir });

  it('default: overlay for a plain tree; record with transaction hooks, with ingest, or when the directory is an overlay union', () => {
    expect(resolveLayerForm(undefined, ctx(), plain)).toBe('overlay');
    expect(resolveLayerForm(undefined, ctx(), () => null)).toBe('overlay');
    expect(resolveLayerForm(undefined, ctx({ transaction: true }), plain)).toBe('record');
    expect(resolveLayerForm(undefined, ctx({ ingest: true }), plain)).toBe('record');
    expect(resolveLayerForm(undefined, ctx(), union)).toBe('record');
  });

  it('an asked form that survives is kept: record anywhere, overlay and keep on a plain tree, keep with ingest', () => {
    for (const c of [ctx(), ctx({ transaction: true }), ctx({ ingest: true, transaction: true })]) {
      expect(resolveLayerForm('record', c, plain)).toBe('record');
      expect(resolveLayerForm('record', c, union)).toBe('record');
    }
    expect(resolveLayerForm('overlay', ctx(), plain)).toBe('overlay');
    expect(resolveLayerForm('keep', ctx(), plain)).toBe('keep');
    expect(resolveLayerForm('keep', ctx({ ingest: true }), plain)).toBe('keep');
    expect(resolveLayerForm('keep', ctx({ ingest: true, transaction: true }), union)).toBe('keep');
  });

  it('--whiteouts overlay is refused with hooks, ingest or a union directory, naming the way and the reason', () => {
    const hooks = refusal(() => resolveLayerForm('overlay', ctx({ transaction: true }), plain));
    expect(hooks.message).toMatch(/--whiteouts overlay cannot be published through the publishing hooks/);
    expect(hooks.message).toMatch(/EPERM/);
    expect(hooks.message).toMatch(/--whiteouts record/);
    expect(hooks.kind).toBe('invalid-argument');
    const ingest = refusal(() => resolveLayerForm('overlay', ctx({ ingest: true }), plain));
    expect(ingest.message).toMatch(/through cvmfs_server ingest: layers are streamed to it, never unpacked here/);
    const u = refusal(() => resolveLayerForm('overlay', ctx(), union));
    expect(u.message).toContain(`through ${dir} (an overlay union mount: a CVMFS transaction)`);
  });

  it('--whiteouts keep is refused with a transaction or a union (the publisher takes .wh.* for deletions)', () => {
    for (const [c, fsType, via] of [
      [ctx({ transaction: true }), plain, 'the publishing hooks'],
      [ctx(), union, `${dir} (an overlay union mount`],
    ] as const) {
      const e = refusal(() => resolveLayerForm('keep' as LayerForm, c, fsType));
      expect(e.message).toContain(`--whiteouts keep cannot be published through ${via}`);
      expect(e.message).toMatch(/takes \.wh\.\* files for deletions/);
    }
  });

  it.skipIf(needs({ root: 'tmpfs and overlay mounts' }))(
    'without an injected probe: a directory not made yet on a real overlay mount is a union (record), on a plain file system not',
    () => {
      const base = fs.mkdtempSync(path.join('/tmp', 'forms-fs-'));
      const [lower, upper, work, mnt] = ['lower', 'upper', 'work', 'mnt'].map((d) => path.join(base, d));
      for (const d of [lower!, upper!, work!, mnt!]) fs.mkdirSync(d);
      mount('overlay', mnt!, 'overlay', 0, `lowerdir=${lower},upperdir=${upper},workdir=${work}`);
      try {
        const at = (repositoryDir: string) => resolveLayerForm(undefined, { transaction: false, ingest: false, repositoryDir });
        expect(at(path.join(mnt!, 'not/made/yet'))).toBe('record');
        expect(() => resolveLayerForm('overlay', { transaction: false, ingest: false, repositoryDir: mnt! })).toThrow(/overlay union mount/);
        expect(fs.statfsSync(base).type).not.toBe(FS_MAGIC.OVERLAY);
        expect(at(path.join(base, 'plain'))).toBe('overlay');
      } finally {
        umount(mnt!, MNT_DETACH);
        fs.rmSync(base, { recursive: true, force: true });
      }
    },
  );
});

/** A one-layer image built without root: etc/passwd, a whiteout-free layer. */
function smallImage(work: string, diffId?: string): { layout: string; layer: BuiltLayer } {
  const st = path.join(work, 'staging');
  fs.mkdirSync(path.join(st, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(st, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(st, 'etc/group'), 'root:x:0:\n');
  const layer = buildLayer(st, 'gzip', path.join(work, 'blobs'), 'l1');
  const layout = path.join(work, 'layout');
  writeLayout(layout, 'v1', [{ layers: [diffId ? { ...layer, diffId } : layer] }]);
  return { layout, layer };
}

describe.skipIf(needs({ binaries: ['tar', 'gzip', 'sh', 'touch'] }))('CLI: what cannot be published is refused before any transaction', () => {
  const base = tempDir('cvmfs-thin-forms-cli-');
  let seq = 0;
  const fresh = () => {
    const d = path.join(base, `c${seq++}`);
    fs.mkdirSync(path.join(d, 'repo'), { recursive: true });
    return { d, repo: path.join(d, 'repo'), mark: (n: string) => path.join(d, n) };
  };
  let image: { layout: string; layer: BuiltLayer };
  beforeAll(() => {
    image = smallImage(path.join(base, 'image'));
  });
  const touchHooks = (w: ReturnType<typeof fresh>) => [
    '--transaction-command',
    `touch ${w.mark('TX')}`,
    '--publish-command',
    `touch ${w.mark('PUB')}`,
    '--abort-command',
    `touch ${w.mark('ABORTED')}`,
    '--lock-file',
    w.mark('lock'),
  ];

  it.each([
    ['overlay', 'transaction hooks', [] as string[], /--whiteouts overlay cannot be published through the publishing hooks/],
    ['keep', 'transaction hooks', [] as string[], /--whiteouts keep cannot be published through the publishing hooks/],
    ['overlay', 'an ingest hook', ['--ingest-command', 'cat'], /--whiteouts overlay cannot be published through cvmfs_server ingest/],
  ])('--whiteouts %s with %s: exit 2 (bad usage), no hook ran, the repository untouched', async (form, _what, extra, message) => {
    const w = fresh();
    const r = await runCli([
      'convert',
      `oci:${image.layout}:v1`,
      '--repository-dir',
      w.repo,
      '--repository',
      REPO,
      '--no-thin',
      '--json',
      '--whiteouts',
      form,
      ...touchHooks(w),
      ...extra,
    ]);
    expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(message)]);
    expect(r.stdout).toBe('');
    expect(['TX', 'PUB', 'ABORTED'].filter((m) => fs.existsSync(w.mark(m)))).toEqual([]);
    expect(fs.readdirSync(w.repo)).toEqual([]);
  });

  // before the first ingest, one transaction creates .layers/<xx> (an ingest -k would create them without a valid owner)
  it('an ingest hook that exits non-zero: the error names the hook, the abort hook ran, only the preparing transaction was opened, the summary says failed', async () => {
    const w = fresh();
    const r = await runCli([
      'convert',
      `oci:${image.layout}:v1`,
      '--repository-dir',
      w.repo,
      '--repository',
      REPO,
      '--no-thin',
      '--json',
      ...touchHooks(w),
      '--ingest-command',
      'false',
    ]);
    const s = json<Summary>(r);
    expect(r.code).toBe(1);
    expect([s.failed, s.images[0]!.status, s.images[0]!.error?.code]).toEqual([1, 'failed', 'CVMFS_THIN_HOOK_FAILED']);
    expect(s.images[0]!.error?.message).toMatch(/ingest hook "false" failed \(exit status 1\)/);
    expect(s.publish_steps).toEqual([
      { step: 'transaction', ok: true },
      { step: 'publish', ok: true },
      { step: 'ingest', ok: false },
      { step: 'abort', ok: true },
    ]);
    expect([fs.existsSync(w.mark('ABORTED')), fs.existsSync(w.mark('TX')), fs.existsSync(w.mark('PUB'))]).toEqual([true, true, true]);
  });

  /** A hook that keeps what it was given and says whether its stdin ended normally. */
  const recordingIngest = (w: ReturnType<typeof fresh>) => ['--ingest-command', `sh -c 'cat > ${w.mark('got.tar')} && touch ${w.mark('COMPLETE')}'`];
  const readTar = (file: string) => {
    const names: string[] = [];
    const p = new TarParser({ entry: (h) => void names.push(h.name), data: () => undefined, entryEnd: () => undefined });
    p.push(fs.readFileSync(file));
    return { names, ended: p.ended };
  };

  it('control: a good layer reaches the ingest hook whole, the record last, then end-of-archive and EOF', async () => {
    const w = fresh();
    await runCli([
      'convert',
      `oci:${image.layout}:v1`,
      '--repository-dir',
      w.repo,
      '--repository',
      REPO,
      '--no-thin',
      '--json',
      ...touchHooks(w),
      ...recordingIngest(w),
    ]);
    expect(fs.existsSync(w.mark('COMPLETE'))).toBe(true);
    const t = readTar(w.mark('got.tar'));
    expect(t.ended).toBe(true);
    expect(t.names).toContain('layerfs/etc/passwd');
    expect(t.names.at(-1)).toBe('.metadata/cvmfs-thin-layer.json');
    // the layer's tar-split (for podman save of a published store), before the record
    expect(t.names.at(-2)).toBe('.metadata/tar-split.json.gz');
  });

  it('a diff_id mismatch: the hook is killed before its stdin ends (no end-of-archive, no record), the abort hook runs', async () => {
    const bad = smallImage(path.join(base, 'bad-diffid'), `sha256:${'1'.repeat(64)}`);
    const w = fresh();
    const r = await runCli([
      'convert',
      `oci:${bad.layout}:v1`,
      '--repository-dir',
      w.repo,
      '--repository',
      REPO,
      '--no-thin',
      '--json',
      ...touchHooks(w),
      ...recordingIngest(w),
    ]);
    const s = json<Summary>(r);
    expect([r.code, s.images[0]!.error?.code]).toEqual([1, 'CVMFS_THIN_DIFFID_MISMATCH']);
    expect(s.images[0]!.error?.message).toContain(`declares diff_id sha256:${'1'.repeat(64)}`);
    expect(fs.existsSync(w.mark('COMPLETE')), 'the hook saw a normal end of its input').toBe(false);
    const t = readTar(w.mark('got.tar'));
    expect(t.names).toContain('layerfs/etc/passwd');
    expect([t.ended, t.names.some((n) => n.startsWith('.metadata/'))]).toEqual([false, false]);
    // the preparing transaction (.layers/<xx>) ran before the ingest; none after it
    expect([fs.existsSync(w.mark('ABORTED')), fs.existsSync(w.mark('TX'))]).toEqual([true, true]);
    expect(s.publish_steps.map((x) => x.step)).toEqual(['transaction', 'publish', 'ingest', 'abort']);
  });
});

const noApplytool = applytoolMissing();
if (noApplytool) process.stderr.write(`[skip] --chains --flat against containerd: ${noApplytool}\n`);

describe.skipIf(needs({ root: 'overlay mounts, chown', binaries: ['tar', 'gzip', 'cp', 'find'] }))('publishing through the simulator', () => {
  const base = simBase('cvmfs-sim-forms-');
  let image: ThreeLayerImage;
  beforeAll(() => {
    image = buildThreeLayerImage(path.join(base, 'image'));
  });

  const hooks = (S: string, o: { ingest?: boolean } = {}) => [
    '--transaction-command',
    simCommand('transaction', S),
    '--publish-command',
    simCommand('publish', S),
    '--abort-command',
    simCommand('abort', '-f', S),
    '--lock-file',
    `${S}.lock`,
    ...(o.ingest ? ['--ingest-command', simCommand('ingest', S, '--catalog', '-k', '-t', '-', '-b', '{base}')] : []),
  ];
  const convert = async (S: string, layout: string, extra: string[], o: { ingest?: boolean } = {}) => {
    const r = await runCli(
      ['convert', `oci:${layout}:v1`, '--repository-dir', simPaths(S).repo, '--repository', REPO, '--no-thin', '--json', ...hooks(S, o), ...extra],
      { timeoutMs: 300_000 },
    );
    return { r, s: json<Summary>(r) };
  };
  const pub = (S: string, ...p: string[]) => path.join(simPaths(S).published, ...p);
  const layerPub = (S: string, hex: string) => pub(S, '.layers', hex.slice(0, 2), hex);
  const markerOf = (S: string, hex: string) => parseLayerMarker(fs.readFileSync(path.join(layerPub(S, hex), '.metadata/cvmfs-thin-layer.json'), 'utf8'), hex);
  const noTransaction = (S: string) => expect({ open: transactionOpen(S), state: fs.existsSync(simPaths(S).state) }).toEqual({ open: false, state: false });

  it('--whiteouts keep with the simulator’s hooks: exit 2, the simulator never opened a transaction, nothing published', async () => {
    const S = newSim(base);
    const r = await runCli([
      'convert',
      `oci:${image.layout}:v1`,
      '--repository-dir',
      simPaths(S).repo,
      '--repository',
      REPO,
      '--no-thin',
      '--json',
      ...hooks(S),
      '--whiteouts',
      'keep',
    ]);
    expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(/--whiteouts keep cannot be published/)]);
    noTransaction(S);
    expect(fs.readdirSync(pub(S))).toEqual([]);
  });

  // Regression test (a bug found and fixed: src/convert/layer.ts unpackOnce → ingestOnce ignores `whiteouts`; src/convert/whiteouts.ts allows
  // 'keep' with ingest): `--whiteouts keep --ingest-command …` is accepted, yet the layer is published in
  // record form (no .wh.* files, marker `whiteouts: "record"`); the help promises "keep: OCI .wh.* files
  // as DUCC writes them (ingest only)". Either honour it or refuse it; never replace it silently.
  it('--whiteouts keep with ingest: the asked form is published (DUCC’s .wh.* files) or refused, not silently replaced', async () => {
    const S = newSim(base);
    const r = await runCli(
      [
        'convert',
        `oci:${image.layout}:v1`,
        '--repository-dir',
        simPaths(S).repo,
        '--repository',
        REPO,
        '--no-thin',
        '--json',
        ...hooks(S, { ingest: true }),
        '--whiteouts',
        'keep',
      ],
      { timeoutMs: 300_000 },
    );
    noTransaction(S);
    const whFile = path.join(layerPub(S, image.hexes[1]!), 'layerfs/.wh.gone');
    expect({ exit: r.code, refusedOrKept: r.code === 2 || fs.existsSync(whFile) }).toEqual({ exit: r.code, refusedOrKept: true });
  });

  // Regression test (a bug found and fixed: record form, transaction path: src/core/fs/whiteout.ts classifyWhiteout matches `.wh.` case-sensitively,
  // CVMFS's publisher case-insensitively — test/helpers/cvmfs-sim/README.md, IsWhiteoutEntry). Image
  // files named `.WH.readme` / `.Wh.notes` are written into layerfs as they are, and the publish takes
  // them for deletions: the files are silently lost (the ingest path keeps them). Record form promises
  // "nothing a CVMFS publish drops" in layerfs; such names should be refused or kept otherwise.
  it('image files whose names start with .wh. in another case survive the transaction path (or the layer is refused)', async () => {
    const w = path.join(base, 'upper-wh');
    fs.mkdirSync(path.join(w, 'staging/docs'), { recursive: true });
    fs.writeFileSync(path.join(w, 'staging/.WH.readme'), 'not a whiteout\n');
    fs.writeFileSync(path.join(w, 'staging/docs/.Wh.notes'), 'notes\n');
    const layer = buildLayer(path.join(w, 'staging'), 'gzip', path.join(w, 'blobs'), 'l1');
    writeLayout(path.join(w, 'layout'), 'v1', [{ layers: [layer] }]);
    const S = newSim(base);
    const { r } = await convert(S, path.join(w, 'layout'), []);
    noTransaction(S);
    const L = path.join(layerPub(S, layer.digest.slice(7)), 'layerfs');
    const kept = ['.WH.readme', 'docs/.Wh.notes'].filter((f) => fs.existsSync(path.join(L, f)));
    expect({ exit: r.code, kept: r.code === 0 ? kept : 'refused' }).toEqual(
      r.code === 0 ? { exit: 0, kept: ['.WH.readme', 'docs/.Wh.notes'] } : { exit: r.code, kept: 'refused' },
    );
  });

  describe('a layer that fails while streamed to the ingest hook', () => {
    const copyLayout = (name: string) => {
      const dst = path.join(base, name);
      fs.cpSync(image.layout, dst, { recursive: true });
      return dst;
    };
    const top = () => image.hexes[2]!;
    const expectLowerComplete = (S: string) => {
      for (const hex of image.hexes.slice(0, 2)) {
        expect(markerOf(S, hex)).toMatchObject({ version: 2, whiteouts: 'record', digest: `sha256:${hex}` });
        expect(fs.existsSync(path.join(layerPub(S, hex), 'layerfs'))).toBe(true);
      }
      expect(fs.readFileSync(path.join(layerPub(S, image.hexes[0]!), 'layerfs/etc/passwd'), 'utf8')).toBe('root:x:0:0::/root:/bin/sh\n');
    };

    it('a corrupt top blob (one byte flipped, same size): fails naming the digest mismatch; nothing of the layer published; no transaction left; lower layers complete', async () => {
      const layout = copyLayout('corrupt');
      const blob = path.join(layout, 'blobs/sha256', top());
      const b = fs.readFileSync(blob);
      b.writeUInt8(b.readUInt8(b.length >> 1) ^ 0xff, b.length >> 1);
      fs.writeFileSync(blob, b);
      const S = newSim(base);
      const { r, s } = await convert(S, layout, [], { ingest: true });
      expect([r.code, s.images[0]!.status, s.images[0]!.error?.code]).toEqual([1, 'failed', 'CVMFS_THIN_DIGEST_MISMATCH']);
      expect(s.images[0]!.error?.message).toContain(`sha256:${top()}`);
      // the abort hook ran (it may find nothing to abort when the hook was killed before it opened anything)
      expect(s.publish_steps.slice(-2).map((p) => p.step)).toEqual(['ingest', 'abort']);
      noTransaction(S);
      expect(fs.existsSync(layerPub(S, top())), 'no directory of the corrupt layer').toBe(false);
      expectLowerComplete(S);
    });

    it('a diff_id the config does not match: refused, nothing of that layer published, no transaction left', async () => {
      const layout = path.join(base, 'bad-diffid');
      writeLayout(layout, 'v1', [{ layers: [image.layers[0]!, image.layers[1]!, { ...image.layers[2]!, diffId: `sha256:${'2'.repeat(64)}` }] }]);
      const S = newSim(base);
      const { r, s } = await convert(S, layout, [], { ingest: true });
      expect([r.code, s.images[0]!.error?.code]).toEqual([1, 'CVMFS_THIN_DIFFID_MISMATCH']);
      noTransaction(S);
      expect(fs.existsSync(layerPub(S, top()))).toBe(false);
      expectLowerComplete(S);
    });
  });

  describe('nested catalogs (simulator’s catalog limit 150)', () => {
    let big: { layout: string; hexes: string[] };
    const FILES = ['etc/passwd', ...[0, 1, 2, 3].flatMap((i) => Array.from({ length: 100 }, (_, j) => `d${i}/f${j}`))];
    beforeAll(() => {
      const w = path.join(base, 'big');
      const s1 = path.join(w, 'staging-1');
      const s2 = path.join(w, 'staging-2');
      fs.mkdirSync(path.join(s1, 'etc'), { recursive: true });
      fs.writeFileSync(path.join(s1, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
      for (let i = 0; i < 4; i++) {
        fs.mkdirSync(path.join(s2, `d${i}`), { recursive: true });
        for (let j = 0; j < 100; j++) fs.writeFileSync(path.join(s2, `d${i}`, `f${j}`), `${i}.${j}\n`);
      }
      const layers = [buildLayer(s1, 'gzip', path.join(w, 'blobs'), 'l1'), buildLayer(s2, 'gzip', path.join(w, 'blobs'), 'l2')];
      writeLayout(path.join(w, 'layout'), 'v1', [{ layers }]);
      big = { layout: path.join(w, 'layout'), hexes: layers.map((l) => l.digest.slice(7)) };
    });
    const walk = (root: string, rel = ''): string[] =>
      fs.readdirSync(path.join(root, rel), { withFileTypes: true }).flatMap((e) => {
        const p = rel ? `${rel}/${e.name}` : e.name;
        return e.isDirectory() ? [p, ...walk(root, p)] : [p];
      });

    it.each([
      { path: 'transaction', ingest: false },
      { path: 'ingest', ingest: true },
    ])('--nested-catalog-entries 100, $path path: published with hidden markers; a stack shows every file and no marker', async (c) => {
      const S = newSim(base, { catalogLimit: 150 });
      const { r } = await convert(S, big.layout, ['--nested-catalog-entries', '100'], { ingest: c.ingest });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      noTransaction(S);
      const markers = [0, 1, 2, 3].map((i) => `d${i}/.cvmfscatalog`);
      for (const m of markers) expect(fs.existsSync(path.join(layerPub(S, big.hexes[1]!), 'layerfs', m))).toBe(true);
      expect(markerOf(S, big.hexes[1]!)?.record?.hidden).toEqual(markers);
      expect(markerOf(S, big.hexes[0]!)?.record?.hidden).toEqual([]);
      for (const [cat, n] of catalogEntries(pub(S))) expect([cat, n <= 150]).toEqual([cat, true]);
      const target = path.join(base, `${path.basename(S)}-rootfs`);
      await mountPublishedStack({
        published: simPaths(S).published,
        repository: REPO,
        hexes: big.hexes,
        work: path.join(base, `${path.basename(S)}-stack`),
        target,
      });
      try {
        const seen = walk(target);
        expect(seen.filter((p) => p.endsWith('.cvmfscatalog'))).toEqual([]);
        expect(seen.filter((p) => fs.lstatSync(path.join(target, p)).isFile()).sort()).toEqual([...FILES].sort());
        expect(fs.readFileSync(path.join(target, 'd3/f99'), 'utf8')).toBe('3.99\n');
      } finally {
        umount(target, MNT_DETACH);
      }
    });

    it.each([
      { path: 'transaction', ingest: false },
      { path: 'ingest', ingest: true },
    ])('without the option (cut 100 000) the $path publish fails on the catalog limit and leaves no transaction open', async (c) => {
      const S = newSim(base, { catalogLimit: 150 });
      const { r, s } = await convert(S, big.layout, [], { ingest: c.ingest });
      expect([r.code, s.images[0]!.status]).toEqual([1, 'failed']);
      // the summary names the failed hook; the publisher's words are on stderr (hooks write there)
      expect(s.images[0]!.error?.message).toMatch(c.ingest ? /ingest hook .* failed \(exit status 1\)/ : /publish hook .* failed \(exit status 1\)/);
      expect(r.stderr).toMatch(new RegExp(`catalog at /\\.layers/${big.hexes[1]!.slice(0, 2)}/${big.hexes[1]} has more than 150 entries`));
      expect(s.publish_steps.map((p) => p.step).at(-1)).toBe('abort');
      if (!c.ingest) expect(s.publish_steps.at(-1)).toEqual({ step: 'abort', ok: true });
      noTransaction(S);
      expect(fs.existsSync(layerPub(S, big.hexes[1]!))).toBe(false);
    });
  });

  describe.skipIf(noApplytool)('--chains --flat through a transaction (record layers)', () => {
    it('the published flat tree and top chain are containerd’s rootfs, but for the documented additions', async () => {
      const ref = path.join(base, 'flat-reference');
      referenceRootfs(image, ref);
      const want = treeSnapshot(ref);
      const S = newSim(base, { includeXattrs: true });
      const { r } = await convert(S, image.layout, ['--chains', '--flat']);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      noTransaction(S);
      const manifestHex = (
        JSON.parse(fs.readFileSync(path.join(image.layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] }
      ).manifests[0]!.digest.slice(7);
      const manifest = JSON.parse(fs.readFileSync(path.join(image.layout, 'blobs/sha256', manifestHex), 'utf8')) as { config: { digest: string } };
      const flat = pub(S, '.flat', manifest.config.digest.slice(7, 9), manifest.config.digest.slice(7));
      const chainId = duccChainIds(image.hexes).at(-1)!;
      const chain = pub(S, '.chains', chainId.slice(0, 2), chainId);
      // Accepted differences from containerd's rootfs, and only these:
      //  - `.cvmfscatalog` at the root of the chain and of the flat tree (their nested catalogs), and the chain's marker;
      //  - in the flat tree, what Apptainer needs (DUCC's addition): `.singularity.d/**`, the links to
      //    it, and the mount points and files it binds over (/proc, /sys, /var/tmp, /root, /etc/hosts, /etc/resolv.conf);
      //  - hard links: a publish splits them into copies (same content; tree-diff ignores link counts).
      const singularity = [
        '.exec',
        '.run',
        '.shell',
        '.test',
        'environment',
        'singularity',
        'proc',
        'sys',
        'var',
        'var/tmp',
        'root',
        'etc/hosts',
        'etc/resolv.conf',
      ];
      for (const [tree, extra] of [
        [chain, ['.cvmfscatalog', '.cvmfs-thin-chain.json']],
        [flat, ['.cvmfscatalog', '.singularity.d', ...singularity]],
      ] as const) {
        const got = treeSnapshot(tree);
        const added = [...got.keys()].filter((p) => !want.has(p));
        expect(added.filter((p) => !p.startsWith('.singularity.d/')).sort(), tree).toEqual([...extra].sort());
        for (const p of added) got.delete(p);
        expect(treeDiff(want, got), tree).toEqual([]);
        expect(hardLinkGroups(tree)).toEqual([]);
      }
      // deleted files stay deleted; the opaque dir holds only the new content
      for (const tree of [chain, flat]) {
        expect([fs.existsSync(path.join(tree, 'gone')), fs.existsSync(path.join(tree, 'gonedir'))]).toEqual([false, false]);
        expect(fs.readdirSync(path.join(tree, 'opq'))).toEqual(['c']);
      }
    });
  });
});
