/**
 * What a real CVMFS publish does to content (../../../shared/notes/cvmfs-real.md),
 * reproduced by the simulator in test/helpers/cvmfs-sim (a real kernel
 * overlayfs union, CVMFS's publish and ingest rules), tested rule by rule;
 * then the converter's layers pushed through it and read back the way the
 * snapshotter stacks them, against containerd's own unpack.
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { lgetxattr, llistxattr, lsetxattr, mknod, MNT_DETACH, S_IFCHR, umount } from '../../src/core/host/sys.js';
import { needs } from '../helpers/env.js';
import { simCommand } from '../helpers/cvmfs-sim/command.js';
import { applytoolMissing, buildThreeLayerImage, referenceRootfs, type ThreeLayerImage } from '../helpers/cvmfs-sim/image-fixture.js';
import { abort, catalogEntries, ingest, publish, simPaths, transaction, transactionOpen } from '../helpers/cvmfs-sim/sim.js';
import { mountPublishedStack } from '../helpers/cvmfs-sim/stack.js';
import { CAPABILITY, inTransaction, mode, newSim, runSim, simBase, tarOf } from '../helpers/cvmfs-sim/testing.js';
import { hardLinkGroups, treeDiff, treeSnapshot, type TreeNode } from '../helpers/cvmfs-sim/tree-diff.js';
import { runCli } from './cli.js';

const errCode = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
};

describe.skipIf(needs({ root: 'overlay mounts, chown', binaries: ['tar', 'cp'] }))('cvmfs publish simulator', () => {
  const base = simBase();
  const pub = (S: string, rel = '') => path.join(simPaths(S).published, rel);

  it('outside a transaction the repository is read-only (EROFS); one transaction at a time', async () => {
    const S = newSim(base);
    const repo = simPaths(S).repo;
    expect(errCode(() => fs.writeFileSync(path.join(repo, 'x'), 'x'))).toBe('EROFS');
    expect(() => publish(S)).toThrow(/no transaction is open/);
    transaction(S);
    expect(() => transaction(S)).toThrow(/a transaction is already open/);
    fs.writeFileSync(path.join(repo, 'x'), 'x');
    publish(S);
    expect(fs.readFileSync(pub(S, 'x'), 'utf8')).toBe('x');
    expect(errCode(() => fs.writeFileSync(path.join(repo, 'y'), 'y'))).toBe('EROFS');
    expect(fs.readFileSync(path.join(repo, 'x'), 'utf8')).toBe('x');
  });

  it('the union refuses 0/0 devices (EPERM, the kernel); other devices and fifos are published', async () => {
    const S = newSim(base);
    await inTransaction(S, (repo) => {
      expect(errCode(() => mknod(path.join(repo, 'wh'), S_IFCHR | 0o644, 0, 0))).toBe('EPERM');
      mknod(path.join(repo, 'null'), S_IFCHR | 0o666, 1, 3);
      fs.chmodSync(path.join(repo, 'null'), 0o666);
      fs.mkdirSync(path.join(repo, 'p'));
      mknod(path.join(repo, 'p', 'fifo'), 0o010640);
    });
    const st = fs.lstatSync(pub(S, 'null'));
    expect([st.isCharacterDevice(), st.rdev, st.mode & 0o7777]).toEqual([true, 259, 0o666]);
    expect(fs.lstatSync(pub(S, 'p/fifo')).isFIFO()).toBe(true);
    expect(fs.existsSync(pub(S, 'wh'))).toBe(false);
  });

  it('a .wh.X file written in a transaction deletes X and is not published (any case, files and directories)', async () => {
    const S = newSim(base);
    await inTransaction(S, (repo) => {
      for (const f of ['x', 'y', 'keep']) fs.writeFileSync(path.join(repo, f), f);
      fs.mkdirSync(path.join(repo, 'd/sub'), { recursive: true });
      fs.writeFileSync(path.join(repo, 'd/sub/f'), 'f');
    });
    const warnings = await inTransaction(S, (repo) => {
      fs.writeFileSync(path.join(repo, '.wh.x'), '');
      fs.writeFileSync(path.join(repo, '.WH.y'), '');
      fs.writeFileSync(path.join(repo, '.wh.d'), '');
      fs.writeFileSync(path.join(repo, '.wh.never'), '');
      // in a new directory a whiteout has nothing to delete: dropped (DUCC's layerfs written through the union)
      fs.mkdirSync(path.join(repo, 'layer'));
      fs.writeFileSync(path.join(repo, 'layer/.wh.gone'), '');
      fs.writeFileSync(path.join(repo, 'layer/.wh..wh..opq'), '');
      fs.writeFileSync(path.join(repo, 'layer/kept'), 'k');
    });
    expect(fs.readdirSync(pub(S)).sort()).toEqual(['keep', 'layer']);
    expect(fs.readdirSync(pub(S, 'layer'))).toEqual(['kept']);
    expect(warnings.join('\n')).toMatch(/'never' should be deleted, but was not found/);
  });

  it('a file or directory removed through the union is gone after publish (0/0 whiteouts in the upper)', async () => {
    const S = newSim(base);
    await inTransaction(S, (repo) => {
      fs.writeFileSync(path.join(repo, 'f'), 'f');
      fs.mkdirSync(path.join(repo, 'd/e'), { recursive: true });
      fs.writeFileSync(path.join(repo, 'd/e/g'), 'g');
      fs.writeFileSync(path.join(repo, 'd/h'), 'h');
    });
    await inTransaction(S, (repo) => {
      fs.rmSync(path.join(repo, 'f'));
      fs.rmSync(path.join(repo, 'd/e'), { recursive: true });
      const st = fs.lstatSync(path.join(simPaths(S).upper, 'f'));
      expect([st.isCharacterDevice(), st.rdev]).toEqual([true, 0]);
    });
    expect(fs.readdirSync(pub(S)).sort()).toEqual(['d']);
    expect(fs.readdirSync(pub(S, 'd'))).toEqual(['h']);
  });

  it('trusted.overlay.opaque set by a writer is escaped by the kernel and not published; the union’s own opaque dir replaces content', async () => {
    const S = newSim(base, { includeXattrs: true });
    await inTransaction(S, (repo) => {
      for (const d of ['o', 'r']) {
        fs.mkdirSync(path.join(repo, d));
        fs.writeFileSync(path.join(repo, d, 'old'), 'old');
      }
    });
    await inTransaction(S, (repo) => {
      lsetxattr(path.join(repo, 'o'), 'trusted.overlay.opaque', 'y');
      fs.writeFileSync(path.join(repo, 'o/new'), 'new');
      const upper = simPaths(S).upper;
      expect(lgetxattr(path.join(upper, 'o'), 'trusted.overlay.overlay.opaque')?.toString()).toBe('y');
      expect(lgetxattr(path.join(upper, 'o'), 'trusted.overlay.opaque')).toBeNull();
      fs.rmSync(path.join(repo, 'r'), { recursive: true });
      fs.mkdirSync(path.join(repo, 'r'));
      fs.writeFileSync(path.join(repo, 'r/new'), 'new');
      expect(lgetxattr(path.join(upper, 'r'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    });
    expect(fs.readdirSync(pub(S, 'o')).sort()).toEqual(['new', 'old']);
    expect(llistxattr(pub(S, 'o'))).toEqual([]);
    expect(fs.readdirSync(pub(S, 'r'))).toEqual(['new']);
    expect(llistxattr(pub(S, 'r'))).toEqual([]);
  });

  it('user.* and security.capability are published only with --include-xattrs; trusted.* never', async () => {
    const write = (repo: string) => {
      fs.writeFileSync(path.join(repo, 'bin'), '#!/bin/sh\n');
      lsetxattr(path.join(repo, 'bin'), 'security.capability', CAPABILITY);
      lsetxattr(path.join(repo, 'bin'), 'user.note', 'hello');
      lsetxattr(path.join(repo, 'bin'), 'trusted.secret', 'no');
    };
    const withX = newSim(base, { includeXattrs: true });
    const without = newSim(base);
    await inTransaction(withX, write);
    await inTransaction(without, write);
    expect(llistxattr(pub(withX, 'bin')).sort()).toEqual(['security.capability', 'user.note']);
    expect(lgetxattr(pub(withX, 'bin'), 'security.capability')).toEqual(CAPABILITY);
    expect(llistxattr(pub(without, 'bin'))).toEqual([]);
  });

  it('hard links are split into copies, even two names in one directory', async () => {
    const S = newSim(base);
    const warnings = await inTransaction(S, (repo) => {
      fs.mkdirSync(path.join(repo, 'd'));
      fs.writeFileSync(path.join(repo, 'd/a'), 'same');
      fs.linkSync(path.join(repo, 'd/a'), path.join(repo, 'd/b'));
      fs.linkSync(path.join(repo, 'd/a'), path.join(repo, 'c'));
    });
    const [a, b, c] = ['d/a', 'd/b', 'c'].map((f) => fs.lstatSync(pub(S, f)));
    expect([a!.nlink, b!.nlink, c!.nlink]).toEqual([1, 1, 1]);
    expect(new Set([a!.ino, b!.ino, c!.ino]).size).toBe(3);
    expect(['d/a', 'd/b', 'c'].map((f) => fs.readFileSync(pub(S, f), 'utf8'))).toEqual(['same', 'same', 'same']);
    expect(warnings.filter((w) => w.includes('linkcount > 1'))).toHaveLength(3);
  });

  it('owners, setuid/setgid/sticky modes, symlinks and mtimes (whole seconds) are kept', async () => {
    const S = newSim(base, { owner: { uid: 500, gid: 500 } });
    await inTransaction(S, (repo) => {
      fs.writeFileSync(path.join(repo, 'tool'), 't');
      fs.chmodSync(path.join(repo, 'tool'), 0o4755);
      fs.mkdirSync(path.join(repo, 'tmp'));
      fs.chmodSync(path.join(repo, 'tmp'), 0o1777);
      fs.mkdirSync(path.join(repo, 'home'));
      fs.chownSync(path.join(repo, 'home'), 1000, 1000);
      fs.chmodSync(path.join(repo, 'home'), 0o2750);
      fs.writeFileSync(path.join(repo, 'home/f'), 'f');
      fs.chownSync(path.join(repo, 'home/f'), 1000, 1001);
      fs.utimesSync(path.join(repo, 'home/f'), 1_600_000_000.5, 1_600_000_000.75);
      fs.symlinkSync('../tool', path.join(repo, 'home/link'));
    });
    expect([mode(pub(S, 'tool')), mode(pub(S, 'tmp')), mode(pub(S, 'home'))]).toEqual([0o4755, 0o1777, 0o2750]);
    const f = fs.lstatSync(pub(S, 'home/f'), { bigint: true });
    expect([f.uid, f.gid, f.mtimeNs]).toEqual([1000n, 1001n, 1_600_000_000_000_000_000n]);
    expect(fs.readlinkSync(pub(S, 'home/link'))).toBe('../tool');
    // the repository root keeps its owner through the union
    expect(fs.lstatSync(pub(S)).uid).toBe(500);
  });

  it('abort discards the transaction', async () => {
    const S = newSim(base);
    transaction(S);
    fs.writeFileSync(path.join(simPaths(S).repo, 'x'), 'x');
    abort(S);
    expect(transactionOpen(S)).toBe(false);
    expect(fs.readdirSync(pub(S))).toEqual([]);
    expect(errCode(() => fs.writeFileSync(path.join(simPaths(S).repo, 'x'), 'x'))).toBe('EROFS');
  });

  it('a catalog over the limit fails the publish, leaves the transaction open and the published content unchanged; abort cleans', async () => {
    const S = newSim(base, { catalogLimit: 10 });
    await inTransaction(S, (repo) => fs.writeFileSync(path.join(repo, 'first'), '1'));
    transaction(S);
    const repo = simPaths(S).repo;
    fs.mkdirSync(path.join(repo, 'many'));
    for (let i = 0; i < 12; i++) fs.writeFileSync(path.join(repo, 'many', `f${i}`), '');
    expect(() => publish(S)).toThrow(/catalog at \/ has more than 10 entries \(15\)/);
    expect(transactionOpen(S)).toBe(true);
    fs.writeFileSync(path.join(repo, 'still-writable'), '');
    expect(fs.readdirSync(pub(S))).toEqual(['first']);
    abort(S);
    expect(fs.readdirSync(repo)).toEqual(['first']);
    // a nested catalog splits the entries
    await inTransaction(S, (r) => {
      fs.mkdirSync(path.join(r, 'many'));
      fs.writeFileSync(path.join(r, 'many', '.cvmfscatalog'), '');
      for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(r, 'many', `f${i}`), '');
    });
    expect(Object.fromEntries(catalogEntries(pub(S)))).toEqual({ '/': 3, '/many': 10 });
  });

  describe('ingest', () => {
    let layer: Buffer;
    beforeAll(() => {
      const st = fs.mkdtempSync(path.join(base, 'staging-'));
      fs.mkdirSync(path.join(st, 'etc'));
      fs.writeFileSync(path.join(st, 'etc/conf'), 'c');
      fs.chownSync(path.join(st, 'etc/conf'), 1000, 1000);
      fs.writeFileSync(path.join(st, 'cap'), 'c');
      lsetxattr(path.join(st, 'cap'), 'security.capability', CAPABILITY);
      lsetxattr(path.join(st, 'cap'), 'user.x', 'y');
      fs.chmodSync(path.join(st, 'cap'), 0o4755);
      fs.writeFileSync(path.join(st, '.wh.gone'), '');
      fs.writeFileSync(path.join(st, 'etc/.wh..wh..opq'), '');
      fs.writeFileSync(path.join(st, 'h1'), 'hl');
      fs.linkSync(path.join(st, 'h1'), path.join(st, 'h2'));
      fs.symlinkSync('etc/conf', path.join(st, 'ln'));
      layer = tarOf(st);
    });

    it('drops xattrs, splits hard links, keeps .wh.* as files, modes kept, owner = repository owner', () => {
      const S = newSim(base, { owner: { uid: 990, gid: 991 }, includeXattrs: true });
      ingest(S, { base: '.layers/ab/abc/layerfs', tar: { bytes: layer } });
      const p = (f: string) => pub(S, `.layers/ab/abc/layerfs/${f}`);
      expect(fs.readdirSync(p('')).sort()).toEqual(['.wh.gone', 'cap', 'etc', 'h1', 'h2', 'ln']);
      expect(fs.readdirSync(p('etc')).sort()).toEqual(['.wh..wh..opq', 'conf']);
      expect(llistxattr(p('cap'))).toEqual([]);
      expect(mode(p('cap'))).toBe(0o4755);
      expect([fs.lstatSync(p('h1')).nlink, fs.lstatSync(p('h2')).nlink, fs.readFileSync(p('h2'), 'utf8')]).toEqual([1, 1, 'hl']);
      for (const f of ['', 'etc', 'etc/conf', 'ln', 'cap']) expect([f, fs.lstatSync(p(f)).uid, fs.lstatSync(p(f)).gid]).toEqual([f, 990, 991]);
      expect(fs.existsSync(p('.cvmfscatalog'))).toBe(false);
      expect(errCode(() => fs.writeFileSync(path.join(simPaths(S).repo, 'x'), ''))).toBe('EROFS');
    });

    it('-k keeps the tar owners; --catalog makes a nested catalog; a second ingest merges into the base, -d BASE replaces it', () => {
      const S = newSim(base, { owner: { uid: 990, gid: 991 } });
      ingest(S, { base: 'L', tar: { bytes: layer }, keepOwnership: true, catalog: true });
      expect(fs.lstatSync(pub(S, 'L/etc/conf')).uid).toBe(1000);
      expect(fs.lstatSync(pub(S, 'L/cap')).uid).toBe(0);
      expect(fs.lstatSync(pub(S, 'L/.cvmfscatalog')).isFile()).toBe(true);
      expect(catalogEntries(pub(S)).get('/L')).toBeGreaterThan(5);
      const other = fs.mkdtempSync(path.join(base, 'staging-'));
      fs.mkdirSync(path.join(other, 'etc'));
      fs.writeFileSync(path.join(other, 'etc/conf'), 'new');
      fs.writeFileSync(path.join(other, 'only'), 'o');
      ingest(S, { base: '/L/', tar: { bytes: tarOf(other) } });
      expect(fs.readdirSync(pub(S, 'L')).sort()).toEqual(['.cvmfscatalog', '.wh.gone', 'cap', 'etc', 'h1', 'h2', 'ln', 'only']);
      expect([fs.readFileSync(pub(S, 'L/etc/conf'), 'utf8'), fs.lstatSync(pub(S, 'L/etc/conf')).uid]).toEqual(['new', 990]);
      ingest(S, { base: 'L', tar: { bytes: tarOf(other) }, deletes: ['L'] });
      expect(fs.readdirSync(pub(S, 'L')).sort()).toEqual(['etc', 'only']);
    });

    it('is refused while a transaction is open, and through the CLI reads the tar from stdin', () => {
      const S = newSim(base);
      transaction(S);
      expect(() => ingest(S, { base: 'L', tar: { bytes: layer } })).toThrow(/a transaction is already open/);
      const r = runSim(['ingest', S, '--catalog', '-k', '-t', '-', '-b', 'L', 'test.example.org'], layer);
      expect([r.code, r.stderr]).toEqual([1, expect.stringMatching(/a transaction is already open/)]);
      expect(runSim(['abort', '-f', S, 'test.example.org']).code).toBe(0);
      const ok = runSim(['ingest', S, '--catalog', '-k', '-t', '-', '-b', 'L', 'test.example.org'], layer);
      expect([ok.code, ok.stderr]).toEqual([0, '']);
      expect(fs.readdirSync(path.join(simPaths(S).repo, 'L')).sort()).toEqual(['.cvmfscatalog', '.wh.gone', 'cap', 'etc', 'h1', 'h2', 'ln']);
    });

    it('an ingest over the catalog limit fails and changes nothing', () => {
      const S = newSim(base, { catalogLimit: 10 });
      expect(() => ingest(S, { base: 'a/L', tar: { bytes: layer } })).toThrow(/catalog at \/ has more than 10 entries \(11\)/);
      expect(fs.readdirSync(pub(S))).toEqual([]);
      ingest(S, { base: 'a/L', tar: { bytes: layer }, catalog: true, deletes: ['nothing-there'] });
      expect(Object.fromEntries(catalogEntries(pub(S)))).toEqual({ '/': 3, '/a/L': 10 });
    });
  });

  it('CLI: usage errors exit 2, refusals exit 1 with one line on stderr; rmfs leaves no mount', () => {
    const S = path.join(base, 'cli');
    expect(runSim(['init', S, '--owner', 'nobody']).code).toBe(2);
    expect(runSim(['init', S, '--owner', '1000:1000', '--include-xattrs', '--catalog-limit', '100']).code).toBe(0);
    expect(JSON.parse(runSim(['status', S]).stdout)).toMatchObject({
      owner: { uid: 1000, gid: 1000 },
      includeXattrs: true,
      catalogLimit: 100,
      transaction: false,
    });
    const bad = runSim(['publish', S]);
    expect([bad.code, bad.stderr]).toEqual([1, `cvmfs-sim: ${S}: no transaction is open\n`]);
    expect(runSim(['frobnicate', S]).code).toBe(2);
    expect(runSim(['transaction', S, 'test.example.org']).code).toBe(0);
    fs.writeFileSync(path.join(S, 'repo', 'x'), 'x');
    expect(runSim(['publish', S, 'test.example.org']).code).toBe(0);
    expect(runSim(['rmfs', S]).code).toBe(0);
    expect(fs.existsSync(S)).toBe(false);
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(S);
  });
});

const noApplytool = applytoolMissing();
if (noApplytool) process.stderr.write(`[skip] converter through a real publish: ${noApplytool}\n`);

/**
 * The converter's layers published by the simulator, stacked by the
 * snapshotter's CvmfsLayers from what a client sees, against containerd's own
 * unpack of the same image. Identical except hard links: a publish splits
 * them (nlink 1, same content), which no reader can undo.
 */
describe.skipIf(needs({ root: 'overlay mounts, chown', binaries: ['tar', 'gzip', 'cp', 'find'] }) ?? noApplytool)('converter through a real publish', () => {
  const REPO = 'test.example.org';
  const base = simBase('cvmfs-sim-e2e-');
  let image: ThreeLayerImage;
  let want: Map<string, TreeNode>;

  beforeAll(() => {
    image = buildThreeLayerImage(path.join(base, 'image'));
    const ref = path.join(base, 'reference');
    referenceRootfs(image, ref);
    want = treeSnapshot(ref);
    expect(hardLinkGroups(ref), 'containerd keeps the hard link pair').toEqual([['hl/one', 'hl/two']]);
  });

  const cases = [
    { name: 'transaction path, repository with CVMFS_INCLUDE_XATTRS', includeXattrs: true, ingest: false },
    { name: 'transaction path, repository without xattrs', includeXattrs: false, ingest: false },
    { name: 'ingest path (ingest --catalog -k per layer)', includeXattrs: false, ingest: true },
    // the image's own chain (what a many-layer image starts from): its marker carries the xattrs the publish dropped
    { name: 'transaction path without xattrs, --top-chain (the stack is the chain)', includeXattrs: false, ingest: false, chain: true },
    { name: 'ingest path, --top-chain', includeXattrs: false, ingest: true, chain: true },
  ];

  it.each(cases)(
    "$name: the rootfs is containerd's",
    async (c) => {
      const S = newSim(base, { includeXattrs: c.includeXattrs });
      const id = path.basename(S);
      const hooks = [
        ['--transaction-command', simCommand('transaction', S)],
        ['--publish-command', simCommand('publish', S)],
        ['--abort-command', simCommand('abort', '-f', S)],
        ['--lock-file', path.join(base, `${id}.lock`)],
        c.ingest ? ['--ingest-command', simCommand('ingest', S, '--catalog', '-k', '-t', '-', '-b', '{base}')] : [],
        c.chain ? ['--top-chain'] : [],
      ].flat();
      const args = ['convert', `oci:${image.layout}:${image.tag}`, '--repository-dir', simPaths(S).repo, '--repository', REPO, '--no-thin', '--json', ...hooks];
      const r = await runCli(args, { timeoutMs: 300_000 });
      // a failed conversion must still have aborted its transaction
      expect({ exit: r.code, transactionLeftOpen: transactionOpen(S) }, `convert: ${r.stderr}\n${r.stdout}`).toEqual({ exit: 0, transactionLeftOpen: false });

      const target = path.join(base, `${id}-rootfs`);
      const stack = await mountPublishedStack({
        published: simPaths(S).published,
        repository: REPO,
        hexes: image.hexes,
        work: path.join(base, `${id}-stack`),
        target,
      });
      try {
        expect(stack.how.includes('chain'), stack.how.join(', ')).toBe(c.chain === true);
        const got = treeSnapshot(target);
        expect(treeDiff(want, got), `merged rootfs vs containerd's (stack: ${stack.how.join(', ')})`).toEqual([]);
        // the one accepted difference: the pair is two copies now
        expect(hardLinkGroups(target)).toEqual([]);
        expect(fs.readFileSync(path.join(target, 'hl/two'), 'utf8')).toBe(fs.readFileSync(path.join(target, 'hl/one'), 'utf8'));
      } finally {
        umount(target, MNT_DETACH);
      }
    },
    600_000,
  );
});
