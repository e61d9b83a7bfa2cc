/**
 * Hot layers (issue 18, cold starts): a profile's pack written from a
 * repository tree (convert/profile-pack.ts) holds each listed file as the
 * stack shows it — the topmost layer's, never one a higher layer deleted,
 * hid behind an opaque directory or replaced, whatever the layers' forms —
 * and a node's hot layer made from it (core/stack/hot.ts) changes nothing a
 * container sees: an overlay with it on top equals the overlay without it,
 * entry by entry (owners, modes, times, xattrs, content). A pack that is not
 * the one the profile names, holds anything but files and directories, is
 * too large or does not arrive in time is not used.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { writeProfilePack } from '../../src/convert/profile-pack.js';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { type HotOptions, HotLayers } from '../../src/core/stack/hot.js';
import { ImageMounts } from '../../src/core/stack/hot-image.js';
import { CvmfsLayers } from '../../src/core/stack/layers.js';
import { systemHost } from '../../src/core/host/host.js';
import { lsetxattr, MNT_DETACH, mount, MS_NODEV, MS_RDONLY, umount } from '../../src/core/host/sys.js';
import { writeErofs } from '../../src/core/fs/erofs.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { packEntriesToBuffer } from '../../src/core/tar/index.js';
import { type AccessProfile, imageDataPath, imagePath, packPath, PROFILE_SCHEMA, profilePath, serializeProfile, stackId } from '../../src/core/thin/profile.js';
import { LayerStack } from '../../src/core/stack/index.js';
import { parseThinManifest } from '../../src/core/thin/manifest.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { MemoryFacts } from '../helpers/cvmfs-sim/stack.js';
import { treeDiff, treeSnapshot } from '../helpers/cvmfs-sim/tree-diff.js';
import { needs, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { createHash } from 'node:crypto';

const REPO = 'unpacked.example.org';
const log = silentLogger();
const OPTS: HotOptions = { waitMs: 10_000, maxBytes: 64 << 20, readTimeoutMs: 5_000 };
const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex').toString('base64');

/** Three layers, one of each form: a record (xattrs), overlay whiteouts (converter v1), DUCC's .wh.* files. */
function stack(repo: string): FakeLayer[] {
  const a = addLayer(
    repo,
    'a',
    { 'bin/tool': 'tool', 'etc/a.conf': 'old', 'etc/old.conf': 'x', 'lib/x/y.so': 'y', 'opt/keep/f': 'f', sized: '12345' },
    { record: { deleted: [], opaque: [], xattrs: [{ path: 'bin/tool', name: 'security.capability', value: CAP }], hidden: [] } },
  );
  fs.chownSync(path.join(a.dir, 'bin/tool'), 1000, 1000);
  fs.chmodSync(path.join(a.dir, 'bin/tool'), 0o4755);
  const b = addLayer(
    repo,
    'b',
    { 'etc/a.conf': 'new', 'etc/old.conf': { whiteout: true }, 'opt/keep': { opaque: true, dir: true }, 'opt/keep/g': 'g', 'lib/x/z.so': 'z' },
    { converter: true },
  );
  fs.chmodSync(path.join(b.dir, 'lib/x'), 0o750);
  fs.chownSync(path.join(b.dir, 'lib/x'), 7, 8);
  fs.utimesSync(path.join(b.dir, 'lib/x'), 1_000_000, 1_000_000);
  lsetxattr(path.join(b.dir, 'etc/a.conf'), 'user.note', 'kept');
  const c = addLayer(repo, 'c', { 'lib/x/.wh.y.so': '', 'usr/bin/c': 'c' });
  return [a, b, c];
}

function profileOf(ls: FakeLayer[], files: [string, number][]): AccessProfile {
  return {
    schema: PROFILE_SCHEMA,
    version: 1,
    layers: ls.map((l) => l.hex),
    prefetch: true,
    created: new Date().toISOString(),
    files: files.map(([p, size], i) => ({ path: p, size, layer: ls[0]!.hex, at: i })),
  };
}

/** Publish `profile` with a pack from `buf` (or written from the tree, with its image when `image`) into the repository. */
async function publish(repo: string, profile: AccessProfile, buf?: Buffer, files?: number, image = false): Promise<AccessProfile> {
  const out = path.join(repo, packPath(profile.layers));
  const imageOut = { meta: path.join(repo, imagePath(profile.layers)), data: path.join(repo, imageDataPath(profile.layers)) };
  fs.mkdirSync(path.dirname(out), { recursive: true });
  for (const f of [out, imageOut.meta, imageOut.data]) fs.rmSync(f, { force: true });
  let p = profile;
  if (buf) {
    fs.writeFileSync(out, buf);
    p = { ...p, pack: { bytes: buf.length, sha256: createHash('sha256').update(buf).digest('hex'), files: files ?? 1 } };
  } else {
    const r = await writeProfilePack(repo, profile, out, { host: systemHost, log, imageOut: image ? imageOut : undefined });
    p = { ...p, pack: r!.pack, image: r!.image };
  }
  fs.writeFileSync(path.join(repo, profilePath(profile.layers)), serializeProfile(p));
  return p;
}

const LISTED: [string, number][] = [
  ['bin/tool', 4],
  ['etc/a.conf', 3], // the profile names layer a: the pack takes b's (the one the stack shows)
  ['etc/old.conf', 1], // deleted by b's whiteout
  ['lib/x/y.so', 1], // deleted by c's .wh. file
  ['opt/keep/f', 1], // hidden by b's opaque directory
  ['opt/keep/g', 1],
  ['lib/x/z.so', 1],
  ['usr/bin/c', 1],
  ['missing/file', 3],
  ['sized', 99], // not the listed size
];

describe.skipIf(needs({ root: 'chown, xattrs, overlay and EROFS mounts' }))('a hot layer on a real overlay', () => {
  it.each(['pack', 'image'] as const)(
    'the %s holds the files the stack shows; the overlay with the hot layer on top equals the one without, entry by entry',
    async (form) => {
      const work = tempDir('hot-layer-');
      const repo = path.join(work, 'cvmfs', REPO);
      const ls = stack(repo);
      const out = path.join(work, 'p.pack');
      const r = await writeProfilePack(repo, profileOf(ls, LISTED), out, { host: systemHost, log });
      expect(r).toMatchObject({ pack: { files: 5 }, skipped: 5 });
      await publish(repo, profileOf(ls, LISTED), undefined, undefined, form === 'image');
      const masks = path.join(work, 'masks');
      fs.mkdirSync(masks);
      const hexes = ls.map((l) => l.hex);
      const hot = await new HotLayers(masks, systemHost, log, OPTS).forStack(repo, hexes);
      expect(hot.why).toBe(form);
      const mounted = () => systemHost.mountinfo().some((m) => m.mountPoint === hot.dir && m.fsType === 'erofs');
      expect(mounted()).toBe(form === 'image');
      onTestFinished(() => {
        if (mounted()) umount(hot.dir!, MNT_DETACH);
      });
      const files = treeSnapshot(hot.dir!);
      expect(
        [...files]
          .filter(([, n]) => n.type === 'file')
          .map(([p]) => p)
          .sort(),
      ).toEqual(['bin/tool', 'etc/a.conf', 'lib/x/z.so', 'opt/keep/g', 'usr/bin/c']);
      expect(fs.readFileSync(path.join(hot.dir!, 'etc/a.conf'), 'utf8')).toBe('new');

      const manifest = parseThinManifest(thinJson(REPO, ls), { allowedRepositories: [REPO], defaultRepository: REPO });
      const loc = cvmfsLocation({ repository: REPO, absoluteMountpoint: repo });
      const resolved = await new CvmfsLayers(loc, path.join(work, 'masks'), new MemoryFacts(), systemHost).resolveThin(manifest);
      const [without, withHot] = [path.join(work, 'without'), path.join(work, 'with')];
      for (const d of [without, withHot]) fs.mkdirSync(d);
      mount('overlay', without, 'overlay', MS_RDONLY, `lowerdir=${resolved.dirs.join(':')}`);
      mount('overlay', withHot, 'overlay', MS_RDONLY, `lowerdir=${[hot.dir!, ...resolved.dirs].join(':')}`);
      try {
        const want = treeSnapshot(without);
        expect(want.get('bin/tool')).toMatchObject({ mode: '4755', owner: '1000:1000', xattrs: { 'security.capability': CAP } });
        expect(want.get('etc/a.conf')?.xattrs).toEqual({ 'user.note': Buffer.from('kept').toString('base64') });
        expect(treeDiff(want, treeSnapshot(withHot))).toEqual([]);
        // directories (their times too) are the stack's
        for (const d of ['.', 'lib', 'lib/x', 'opt', 'opt/keep', 'usr/bin']) {
          const [a, b] = [fs.lstatSync(path.join(without, d)), fs.lstatSync(path.join(withHot, d))];
          const [an, bn] = [fs.lstatSync(path.join(without, d), { bigint: true }).mtimeNs, fs.lstatSync(path.join(withHot, d), { bigint: true }).mtimeNs];
          expect([b.mode, b.uid, b.gid, bn], d).toEqual([a.mode, a.uid, a.gid, an]);
        }
      } finally {
        umount(without, MNT_DETACH);
        umount(withHot, MNT_DETACH);
      }
      if (form === 'image') {
        // the client died and another was mounted (another device): the next pull detaches the image and mounts it again
        const why = async (h: HotLayers) => (await h.forStack(repo, hexes)).why;
        expect(await why(new HotLayers(masks, systemHost, log, OPTS))).toBe('local');
        const replaced = Object.create(systemHost) as typeof systemHost;
        replaced.probeFs = async (ops, signal) =>
          (await systemHost.probeFs(ops, signal)).map((a) => (a.ok && a.dev !== undefined ? { ...a, dev: a.dev + 1 } : a));
        // a daemon that finds it mounted takes the device it sees first
        expect(await why(new HotLayers(masks, replaced, log, OPTS))).toBe('local');
        const hot2 = new HotLayers(masks, systemHost, log, OPTS);
        expect(await why(hot2)).toBe('local');
        hot2.images.record(hot.dir!, repo, fs.statSync(repo).dev + 1);
        expect(await why(hot2)).toBe('image');
        expect(systemHost.mountinfo().filter((m) => m.mountPoint === hot.dir).length).toBe(1);
        expect(fs.readFileSync(path.join(hot.dir!, 'etc/a.conf'), 'utf8')).toBe('new');
      }
      // the masks no snapshot uses go, a mounted image unmounted first
      const st = await LayerStack.open({ root: work, location: loc, host: systemHost, log, factsFile: path.join(work, 'facts.json') });
      expect(await st.collectMasks(new Set())).toBeGreaterThanOrEqual(1);
      expect([mounted(), fs.existsSync(hot.dir!)]).toEqual([false, false]);
    },
  );
});

/** A CVMFS client's download counter (`user.ndownload`, read with getfattr) over the recording host: reading a file not in `cached` downloads it. */
class ClientHost extends RecordingHost {
  downloads = 0;
  readonly cached = new Set<string>();
  /** Catalogs loaded: the profiles' own is loaded at the first read below `.profiles/` (unless `profilesCatalog`). */
  catalogs = 3;
  profilesCatalog = false;
  constructor() {
    super();
    this.execHandler = (file) => ({
      code: 0,
      stdout: file === 'getfattr' ? `# file: mp\nuser.nclg="${this.catalogs}"\nuser.ndownload="${this.downloads}"\nuser.rx="7"\n` : '',
      stderr: '',
    });
  }
  override async probeFs(ops: Parameters<RecordingHost['probeFs']>[0]) {
    const r = await super.probeFs(ops);
    ops.forEach((o, i) => {
      if ((o.op === 'read' || o.op === 'copy') && r[i]?.ok && o.path.includes('/.profiles/') && !this.profilesCatalog) {
        this.profilesCatalog = true;
        this.catalogs++;
      }
      if ((o.op === 'read' || o.op === 'copy') && r[i]?.ok && !this.cached.has(o.path)) {
        this.downloads++;
        this.cached.add(o.path);
      }
    });
    return r;
  }
  copies = () => this.calls.filter((c) => c.op === 'probeFs' && (c.args as string[]).some((a) => a.startsWith('copy '))).length;
}

describe('a hot layer that is not used', () => {
  const setup = () => {
    const work = tempDir('hot-refused-');
    const repo = path.join(work, 'cvmfs', REPO);
    const ls = [addLayer(repo, 'h1', { 'app/x': 'x' }), addLayer(repo, 'h2', { 'app/y': 'y' })];
    const masks = path.join(work, 'masks');
    fs.mkdirSync(masks);
    return { work, repo, ls, masks, hexes: ls.map((l) => l.hex) };
  };
  const tar = (entries: Parameters<typeof packEntriesToBuffer>[0]) => packEntriesToBuffer([...entries, { name: 'pad', data: Buffer.alloc(2048) }]);

  it('a pack that is not the one the profile names, holds a link, leaves its directory or is over the node’s limit: no hot layer, nothing left behind', async () => {
    const { repo, ls, masks, hexes } = setup();
    const p = profileOf(ls, [['app/x', 1]]);
    const hot = () => new HotLayers(masks, systemHost, log, OPTS).forStack(repo, hexes);
    // tampered after publishing
    await publish(repo, p, tar([{ name: 'app/x', data: 'x' }]), 2);
    fs.appendFileSync(path.join(repo, packPath(hexes)), 'more');
    expect((await hot()).why).toMatch(/^pack not copied: .* has \d+ bytes, not \d+$/);
    // the same size, one byte changed: what was unpacked does not hash to the profile's sha256
    await publish(repo, p, tar([{ name: 'app/x', data: 'x' }]), 2);
    const packFile = path.join(repo, packPath(hexes));
    const bytes = fs.readFileSync(packFile);
    bytes[bytes.indexOf('x', 512)] = 'y'.charCodeAt(0);
    fs.writeFileSync(packFile, bytes);
    expect((await hot()).why).toMatch(/^pack is not the one the profile names \(sha256:[0-9a-f]{64}\)$/);
    // a symlink in it
    await publish(repo, p, tar([{ name: 'app/x', type: 'symlink', linkname: '/etc/shadow' }]), 1);
    expect((await hot()).why).toMatch(/pack holds 1 files and 1 other entries/);
    // a path out of its directory
    await publish(repo, p, tar([{ name: '../../escape', data: 'e' }]), 2);
    expect((await hot()).why).toMatch(/^failed: /);
    expect(fs.existsSync(path.join(masks, '..', 'escape'))).toBe(false);
    // over the node's limit
    await publish(repo, p, tar([{ name: 'app/x', data: 'x' }]), 2);
    expect((await new HotLayers(masks, systemHost, log, { ...OPTS, maxBytes: 1024 }).forStack(repo, hexes)).why).toMatch(/over the node's 1024/);
    // none of these left a directory, a copy or a temporary behind
    expect(fs.readdirSync(masks)).toEqual([]);
    // no profile, or one without a pack, or for other layers: said so
    fs.rmSync(path.join(repo, '.profiles'), { recursive: true });
    expect((await hot()).why).toBe('no profile');
  });

  it('a pull waits at most the wait; the fetch goes on and the next pull of the layers finds the hot layer', async () => {
    const { repo, ls, masks, hexes } = setup();
    await publish(repo, profileOf(ls, [['app/x', 1]]), tar([{ name: 'app/' }, { name: 'app/x', data: 'x' }]), 2);
    const host = new RecordingHost();
    host.stalled.add(path.join(repo, packPath(hexes)));
    const hot = new HotLayers(masks, host, log, { ...OPTS, waitMs: 200 });
    const t0 = Date.now();
    const first = await hot.forStack(repo, hexes);
    expect(first).toMatchObject({ dir: null, why: 'not ready within 200 ms' });
    expect(Date.now() - t0).toBeLessThan(2000);
    host.unstall();
    const second = await hot.forStack(repo, hexes); // the same fetch, now answered
    expect(second.dir).toMatch(/\/hot-[0-9a-f]{64}$/);
    expect((await hot.forStack(repo, hexes)).why).toBe('local');
    // removed by a cleanup (no snapshot used it): the next pull fetches it again
    fs.rmSync(second.dir!, { recursive: true });
    expect((await hot.forStack(repo, hexes)).why).toBe('pack');
    expect(fs.readFileSync(path.join(second.dir!, 'app/x'), 'utf8')).toBe('x');
  });

  it('the pack is unpacked while it is copied: a copy written piece by piece (headers and contents cut anywhere) gives the same hot layer', async () => {
    const { repo, ls, masks, hexes } = setup();
    const names = Array.from({ length: 12 }, (_, i) => `app/f${i}`);
    const content = (i: number) => Buffer.alloc(700 + 333 * i, String.fromCharCode(97 + i));
    await publish(
      repo,
      profileOf(
        ls,
        names.map((n, i) => [n, content(i).length]),
      ),
      tar([{ name: 'app/' }, ...names.map((n, i) => ({ name: n, data: content(i) }))]),
      13,
    );
    const host = new RecordingHost();
    host.copyPace = { bytes: 1000, ms: 3 };
    const r = await new HotLayers(masks, host, log, OPTS).forStack(repo, hexes);
    expect(r.why).toBe('pack');
    for (const [i, n] of names.entries()) expect(fs.readFileSync(path.join(r.dir!, n)).equals(content(i)), n).toBe(true);
    expect(fs.readdirSync(masks)).toEqual([path.basename(r.dir!)]);
  });

  it("a node whose CVMFS client already holds the profile's files makes no hot layer (its pack is not fetched); a cold client, or one whose counters are unknown, does", async () => {
    const { repo, ls, masks, hexes } = setup();
    await publish(
      repo,
      profileOf(ls, [
        ['app/x', 1],
        ['app/x', 1],
      ]),
      tar([{ name: 'app/' }, { name: 'app/x', data: 'x' }]),
      2,
    );
    const files = [path.join(ls[0]!.dir, 'app/x')];
    // warm: the files were read through this client before (the pack was not)
    const warm = new ClientHost();
    for (const f of [...files, path.join(repo, profilePath(hexes))]) warm.cached.add(f);
    const onWarm = new HotLayers(masks, warm, log, OPTS);
    const w = await onWarm.forStack(repo, hexes);
    expect(w).toMatchObject({ dir: null, why: "the CVMFS client's cache holds the profile's files" });
    expect([warm.copies(), warm.downloads, fs.readdirSync(masks)]).toEqual([0, 0, []]);
    // the node's next pull of the layers asks nothing (the verdict holds for a while)
    const asked = warm.calls.length;
    expect((await onWarm.forStack(repo, hexes)).why).toBe("the CVMFS client's cache holds the profile's files");
    expect(warm.calls.length).toBe(asked);
    // cold: the sample is downloaded, so the pack is fetched and unpacked
    const cold = new ClientHost();
    const c = await new HotLayers(masks, cold, log, OPTS).forStack(repo, hexes);
    expect([c.why, cold.copies()]).toEqual(['pack', 1]);
    // the profile came over the network: no sample was opened (the profile and the pack were downloaded)
    expect([...cold.cached].sort()).toEqual([path.join(repo, packPath(hexes)), path.join(repo, profilePath(hexes))].sort());
    fs.rmSync(c.dir!, { recursive: true });
    // only the pack in the cache (a node whose containers read the files from its hot layer): fetched again
    const packOnly = new ClientHost();
    packOnly.cached.add(path.join(repo, packPath(hexes)));
    expect((await new HotLayers(masks, packOnly, log, OPTS).forStack(repo, hexes)).why).toBe('pack');
    fs.rmSync(c.dir!, { recursive: true });
    // a listed file missing from its layer, or no counters (not CVMFS, no getfattr): the pack is used
    const noCounters = new ClientHost();
    noCounters.execHandler = () => ({ code: 1, stdout: '', stderr: 'getfattr: not found' });
    for (const f of files) noCounters.cached.add(f);
    expect((await new HotLayers(masks, noCounters, log, OPTS).forStack(repo, hexes)).why).toBe('pack');
    fs.rmSync(c.dir!, { recursive: true });
    fs.rmSync(files[0]!);
    const gone = new ClientHost();
    expect((await new HotLayers(masks, gone, log, OPTS).forStack(repo, hexes)).why).toBe('pack');
  });

  it("the check's own reads never make the next check say warm: a node whose containers read the files from its hot layer fetches the pack again", async () => {
    const work = tempDir('hot-sample-');
    const repo = path.join(work, 'cvmfs', REPO);
    const names = Array.from({ length: 40 }, (_, i) => `app/f${i}`);
    const ls = [addLayer(repo, 'many', Object.fromEntries(names.map((n) => [n, n])))];
    const hexes = ls.map((l) => l.hex);
    const masks = path.join(work, 'masks');
    fs.mkdirSync(masks);
    await publish(
      repo,
      profileOf(
        ls,
        names.map((n) => [n, n.length]),
      ),
      tar([{ name: 'app/' }, ...names.map((n) => ({ name: n, data: n }))]),
      41,
    );
    const client = new ClientHost();
    for (let i = 0; i < 3; i++) {
      const r = await new HotLayers(masks, client, log, OPTS).forStack(repo, hexes);
      expect(r.why, `pull ${i}`).toBe('pack');
      fs.rmSync(r.dir!, { recursive: true }); // collected: the next pull makes it again
    }
    // what the checks opened is cached now, not the whole profile
    expect(client.cached.size).toBeLessThan(names.length);
  });

  it('a thin image pulled with a pack gets its hot layer as its topmost lower; without a pack, or with --hot-wait 0, none', async () => {
    const { work, repo, ls, hexes } = setup();
    const dir = path.join(work, 'thin');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'thin.json'), thinJson(REPO, ls));
    const open = (root: string, hot?: HotOptions) =>
      LayerStack.open({
        root: path.join(work, root),
        location: cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
        host: new RecordingHost(),
        log,
        factsFile: path.join(work, root, 'f.json'),
        hot,
      });
    const s0 = await open('s0', OPTS);
    const none = await s0.linkThin(dir, { snapshot: 'a' });
    expect([none!.how, none!.hot?.why]).toEqual([['clean'], 'no profile']);
    await publish(repo, profileOf(ls, [['app/x', 1]]), tar([{ name: 'app/' }, { name: 'app/x', data: 'x' }]), 2);
    // published since the first pull: the next pull of the same node finds it
    const r = await s0.linkThin(dir, { snapshot: 'b' });
    expect(r!.how).toEqual(['hot', 'clean']);
    expect(r!.lowers.map((l) => l.dir)).toEqual([path.join(work, 's0', 'masks', `hot-${stackId(hexes)}`), ls[1]!.dir, ls[0]!.dir]);
    const off = await (await open('s2')).linkThin(dir, { snapshot: 'c' });
    expect([off!.how, off!.hot]).toEqual([['clean'], undefined]);
  });
});

describe("a hot layer mounted from the profile's image", () => {
  const setup = async (o: { image?: Buffer | 'none' | 'short data' } = {}) => {
    const work = tempDir('hot-image-');
    const repo = path.join(work, 'cvmfs', REPO);
    const ls = [addLayer(repo, 'i1', { 'app/x': 'x' }), addLayer(repo, 'i2', { 'app/y': 'y' })];
    const hexes = ls.map((l) => l.hex);
    const masks = path.join(work, 'masks');
    fs.mkdirSync(masks);
    const p = await publish(
      repo,
      profileOf(ls, [['app/x', 1]]),
      packEntriesToBuffer([{ name: 'app/' }, { name: 'app/x', data: 'x' }, { name: 'pad', data: Buffer.alloc(2048) }]),
      2,
    );
    const src = path.join(work, 'x');
    fs.writeFileSync(src, 'x');
    const e = { mode: 0o755, uid: 0, gid: 0, mtimeNs: 0n, xattrs: [] };
    const file = path.join(repo, imagePath(hexes));
    const data = path.join(repo, imageDataPath(hexes));
    const uuid = Buffer.alloc(16, 9);
    const img = await writeErofs(
      [
        { path: '', type: 'dir', ...e },
        { path: 'app', type: 'dir', ...e },
        { path: 'app/x', type: 'file', ...e, source: src, size: 1 },
      ],
      file,
      data,
      { uuid, buildTimeNs: 0n },
    );
    if (o.image === 'none') fs.rmSync(file);
    else if (o.image === 'short data') fs.truncateSync(data, 0);
    else if (o.image) fs.writeFileSync(file, o.image);
    fs.writeFileSync(path.join(repo, profilePath(hexes)), serializeProfile({ ...p, image: { ...img, uuid: uuid.toString('hex') } }));
    return { work, repo, ls, hexes, masks, file, data, final: path.join(masks, `hot-${stackId(hexes)}`) };
  };
  const erofsMounts = (h: RecordingHost) => h.ops('mount').filter((c) => c.args[2] === 'erofs');

  it('is mounted read-only (nodev, not nosuid) on masks/hot-<stack id> with its data file as the device, the data read ahead by the helper (nothing written), the pack not copied', async () => {
    const { repo, hexes, masks, file, data, final } = await setup();
    const host = new RecordingHost();
    const r = await new HotLayers(masks, host, log, OPTS).forStack(repo, hexes);
    expect([r.why, r.dir]).toEqual(['image', final]);
    expect(erofsMounts(host).map((c) => c.args)).toEqual([[file, final, 'erofs', MS_RDONLY | MS_NODEV, `device=${data}`]]);
    await new Promise((res) => setTimeout(res, 50));
    expect(host.copyProbes).toEqual([{ path: data, to: undefined }]);
    expect(fs.readdirSync(masks)).toEqual([path.basename(final)]);
  });

  it('an image that is not the profile’s, missing, refused by the kernel, stalled, or a kernel that cannot mount one: the pack is unpacked instead', async () => {
    for (const image of [Buffer.alloc(8192), 'none', 'short data'] as const) {
      const { repo, hexes, masks } = await setup({ image });
      const host = new RecordingHost();
      const r = await new HotLayers(masks, host, log, OPTS).forStack(repo, hexes);
      expect([r.why, erofsMounts(host).length], String(image)).toEqual(['pack', 0]);
      expect(fs.readFileSync(path.join(r.dir!, 'app/x'), 'utf8')).toBe('x');
    }
    // ENOTBLK (before Linux 6.12): not asked again by this daemon
    // EINVAL (this image is bad): the pack, and the next image is mounted
    const bad = await setup();
    const badHost = new RecordingHost();
    badHost.failNext.set('mount', 'EINVAL');
    const onBad = new HotLayers(bad.masks, badHost, log, OPTS);
    expect((await onBad.forStack(bad.repo, bad.hexes)).why).toBe('pack');
    fs.rmSync(bad.final, { recursive: true });
    expect((await onBad.forStack(bad.repo, bad.hexes)).why).toBe('image');
    // a client that stalls on the image: the pack, within the deadline
    const slow = await setup();
    const stalled = new RecordingHost();
    stalled.stalled.add(path.join(slow.repo, imagePath(slow.hexes)));
    const t = performance.now();
    expect((await new HotLayers(slow.masks, stalled, log, { ...OPTS, readTimeoutMs: 300 }).forStack(slow.repo, slow.hexes)).why).toBe('pack');
    expect(performance.now() - t).toBeLessThan(3000);
    stalled.unstall();
    const host = new RecordingHost();
    host.failNext.set('mount', 'ENOTBLK');
    const first = await setup();
    const hot = new HotLayers(first.masks, host, log, OPTS);
    expect((await hot.forStack(first.repo, first.hexes)).why).toBe('pack');
    const second = await setup();
    expect((await hot.forStack(second.repo, [...second.hexes].reverse())).why).not.toBe('image');
    expect(erofsMounts(host)).toHaveLength(1);
    expect(fs.readdirSync(first.final).sort()).toEqual(['app', 'pad']);
  });

  it("a cold client (it loads the profiles' catalog) reads the image's data ahead beside the profile; a warm one that read the profile before (its catalog loaded) but never the image makes none", async () => {
    const { repo, ls, hexes, masks, data } = await setup();
    const cold = new ClientHost();
    cold.profilesCatalog = false;
    const r = await new HotLayers(masks, cold, log, OPTS).forStack(repo, hexes);
    expect(r.why).toBe('image');
    // read ahead once (started by the catalog load, not again at the mount), and no cache check: no sample opened
    await new Promise((res) => setTimeout(res, 50));
    expect(cold.copyProbes).toEqual([{ path: data, to: undefined }]);
    expect(cold.cached.has(path.join(ls[0]!.dir, 'app/x'))).toBe(false);
    // warm: the files and the profile in the cache, the profiles' catalog loaded, the image never read
    const { repo: repo2, ls: ls2, hexes: hexes2, masks: masks2 } = await setup();
    const warm = new ClientHost();
    warm.profilesCatalog = true;
    for (const f of [path.join(ls2[0]!.dir, 'app/x'), path.join(repo2, profilePath(hexes2))]) warm.cached.add(f);
    const w = await new HotLayers(masks2, warm, log, OPTS).forStack(repo2, hexes2);
    expect(w.why).toBe("the CVMFS client's cache holds the profile's files");
    await new Promise((res) => setTimeout(res, 50));
    expect([warm.copyProbes, erofsMounts(warm)]).toEqual([[], []]);
  });

  it('hot-image off: the pack, never a mount', async () => {
    const { repo, hexes, masks } = await setup();
    const host = new RecordingHost();
    expect((await new HotLayers(masks, host, log, { ...OPTS, image: false }).forStack(repo, hexes)).why).toBe('pack');
    expect(erofsMounts(host)).toEqual([]);
  });

  it("a container's Prepare detaches an image found mounted on a client that was replaced since (another device): the container sees the stack's own files", async () => {
    const { work, repo, ls, final, file } = await setup();
    fs.mkdirSync(final);
    class Replaced extends RecordingHost {
      shift = 0;
      override async probeFs(ops: Parameters<RecordingHost['probeFs']>[0]) {
        return (await super.probeFs(ops)).map((a) => (a.ok && a.dev !== undefined ? { ...a, dev: a.dev + this.shift } : a));
      }
    }
    const host = new Replaced();
    host.mount(file, final, 'erofs', MS_RDONLY, null); // left by the daemon before
    const st = await LayerStack.open({
      root: work,
      location: cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
      host,
      log,
      factsFile: path.join(work, 'f.json'),
      hot: OPTS,
    });
    const dirs = [final, ls[1]!.dir, ls[0]!.dir];
    await st.checkAvailable(dirs, 'c1');
    expect(host.mountedAt(final)).toBeDefined();
    host.shift = 1;
    await st.checkAvailable(dirs, 'c2');
    expect([host.mountedAt(final), host.ops('umount').map((c) => c.args)]).toEqual([undefined, [[final, MNT_DETACH]]]);
  });

  it('an empty hot-<id> directory (an image’s mount point after a reboot) is not a hot layer: mounted again at the next pull', async () => {
    const { repo, hexes, masks, final } = await setup();
    fs.mkdirSync(final);
    const host = new RecordingHost();
    expect((await new HotLayers(masks, host, log, OPTS).forStack(repo, hexes)).why).toBe('image');
    expect(erofsMounts(host)).toHaveLength(1);
    // an unpacked one is (it is not empty)
    fs.mkdirSync(path.join(final, 'app'));
    expect((await new HotLayers(masks, host, log, OPTS).forStack(repo, hexes)).why).toBe('local');
  });
});

describe('images mounted on a CVMFS client that was replaced', () => {
  it('are adopted with the device seen first, detached when the repository mount is another device, left alone when it is not known', () => {
    const work = tempDir('hot-images-');
    const masks = path.join(work, 'masks');
    const [a, b] = [path.join(masks, `hot-${'a'.repeat(64)}`), path.join(masks, `hot-${'b'.repeat(64)}`)];
    for (const d of [a, b]) fs.mkdirSync(d, { recursive: true });
    const host = new RecordingHost();
    host.mount('/cvmfs/r/.profiles/aa/a.erofs', a, 'erofs', MS_RDONLY, null);
    const images = new ImageMounts(host, log, masks);
    images.record(b, '/cvmfs/r', 7);
    const dev = new Map<string, number>();
    // not known: nothing decided
    expect(images.check([a, b, '/cvmfs/r/.layers/x'], (r) => dev.get(r), '/cvmfs/r')).toEqual([]);
    dev.set('/cvmfs/r', 7);
    // a (found mounted) takes 7; b was mounted on 7
    expect(images.check([a, b], (r) => dev.get(r), '/cvmfs/r')).toEqual([]);
    dev.set('/cvmfs/r', 8);
    expect(images.check([b], (r) => dev.get(r), undefined)).toEqual([b]);
    expect(images.check([a], (r) => dev.get(r), '/cvmfs/r')).toEqual([a]);
    // b was not mounted in this host (EINVAL, ignored)
    expect(host.ops('umount').map((c) => c.args)).toEqual([
      [b, MNT_DETACH],
      [a, MNT_DETACH],
    ]);
    expect(host.mountedAt(a)).toBeUndefined();
    // forgotten: not checked again
    expect(images.check([a, b], (r) => dev.get(r), '/cvmfs/r')).toEqual([]);
  });
});
