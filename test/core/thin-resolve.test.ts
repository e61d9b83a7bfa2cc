/**
 * Resolving a thin image of many layers (issue 18: start time that does not
 * depend on the layer count): the layer-facts file is written behind, once
 * for many new layers; layers resolve concurrently but the result keeps the
 * manifest's order and names the topmost missing layer; a
 * layer listed twice (or by two images at once) has its masks built once;
 * the probe helper answers a probe's stats in order while running them at
 * once.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { chainDir, dirtyChainMarker, duccChainIds } from '../../src/core/cvmfs/layout.js';
import { CvmfsLayers, type LayerFacts } from '../../src/core/stack/layers.js';
import { ThinError } from '../../src/core/errors/errors.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { FactsFile } from '../../src/core/stack/facts.js';
import { LayerStack } from '../../src/core/stack/index.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { ProbeHelper } from '../../src/core/host/probe-child.js';
import { parseThinManifest } from '../../src/core/thin/manifest.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { systemHost } from '../../src/core/host/host.js';

const REPO = 'unpacked.cern.ch';

function fixture() {
  const work = tempDir('thin-resolve-');
  const repo = path.join(work, 'cvmfs', REPO);
  const puts: string[] = [];
  const facts = new Map<string, LayerFacts>();
  const layers = new CvmfsLayers(
    cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
    path.join(work, 'masks'),
    {
      get: (k) => facts.get(k),
      put: async (k, f) => {
        puts.push(k);
        facts.set(k, f);
      },
    },
    systemHost,
  );
  const manifest = (ls: FakeLayer[]) => parseThinManifest(thinJson(REPO, ls), { allowedRepositories: [REPO], defaultRepository: REPO });
  return { work, repo, layers, manifest, puts };
}

/** A LayerStack over the fixture's repository, its state in `<work>/<state>`. */
const openStack = (work: string, repo: string, host: RecordingHost, state = 'state') =>
  LayerStack.open({
    root: path.join(work, state),
    location: cvmfsLocation({ repository: REPO, absoluteMountpoint: repo }),
    host,
    log: silentLogger(),
    factsFile: path.join(work, state, 'facts.json'),
  });

describe('thin images of many layers', () => {
  it('100 layers resolve top first in manifest order, each layer once; masks of a layer listed twice are built once', async () => {
    const { repo, work, layers, manifest, puts } = fixture();
    const ls = Array.from({ length: 100 }, (_, i) => addLayer(repo, `l${i}`, i % 10 === 0 ? { [`f${i}`]: 'x', [`.wh.f${i - 1}`]: '' } : { [`f${i}`]: 'x' }));
    const r = await layers.resolveThin(manifest([...ls, ls[10]!]));
    // a scanned layer with whiteouts (every 10th but the base) gets a mask below it, and one above hiding the .wh. files
    const bare = r.dirs.filter((d) => !d.startsWith(path.join(work, 'masks')));
    expect(bare).toEqual([ls[10]!.dir, ...ls.map((l) => l.dir).reverse()]);
    expect(new Set(puts).size).toBe(100);
    expect(puts).toHaveLength(100); // the layer listed twice was looked at once
    expect(readdirSync(path.join(work, 'masks'))).toHaveLength(10);
  });

  it('a missing layer is named by its manifest field: the topmost missing one, whatever finished first', async () => {
    const { repo, layers, manifest } = fixture();
    const ls = Array.from({ length: 40 }, (_, i) => addLayer(repo, `m${i}`, { [`f${i}`]: 'x' }));
    const gone = (l: FakeLayer): FakeLayer => ({ ...l, hex: l.hex.replace(/^./, (c) => (c === 'a' ? 'b' : 'a')) });
    const m = manifest([...ls.slice(0, 5), gone(ls[5]!), ...ls.slice(6, 30), gone(ls[30]!), ...ls.slice(31)]);
    let err: unknown;
    try {
      await layers.resolveThin(m);
    } catch (e) {
      err = e;
    }
    expect(ThinError.is(err) && err.code).toBe('CVMFS_THIN_LAYER_MISSING');
    expect((err as Error).message).toMatch(/^thin image manifest: layers\[30\]\.url: layer .* does not exist in CVMFS/);
  });

  it('the layer-facts file is written behind: many puts, few writes, all of them in the file after flush; a failed write only warns', async () => {
    const dir = tempDir('facts-');
    const file = path.join(dir, 'facts.json');
    const f = await FactsFile.open(file);
    await Promise.all(Array.from({ length: 100 }, (_, i) => f.put(`/l/${i}`, { mode: 'clean' })));
    expect(f.get('/l/99')).toEqual({ mode: 'clean' });
    await f.flush();
    const mtime = statSync(file).mtimeMs;
    expect(Object.keys(JSON.parse(readFileSync(file, 'utf8')) as object)).toHaveLength(100);
    await f.prune((x) => x.mode !== 'clean');
    await f.flush();
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({});
    expect(statSync(file).mtimeMs).toBeGreaterThanOrEqual(mtime);
    // reopened: what was flushed
    expect((await FactsFile.open(file)).get('/l/1')).toBeUndefined();
    // a directory that does not exist: put answers, the warning is logged, nothing thrown
    const warned: unknown[] = [];
    const log = { warn: (o: unknown) => warned.push(o) } as unknown as Parameters<typeof FactsFile.open>[1];
    const g = await FactsFile.open(path.join(dir, 'missing', 'facts.json'), log);
    await g.put('/x', { mode: 'overlay' });
    await g.flush();
    expect(warned).toHaveLength(1);
    expect(existsSync(path.join(dir, 'missing'))).toBe(false);
  });

  it("the probe helper runs a probe's stats at once and answers them in order; a failed required op ends the probe", async () => {
    const { repo } = fixture();
    const ls = Array.from({ length: 30 }, (_, i) => addLayer(repo, `p${i}`, { f: 'x' }));
    const helper = new ProbeHelper();
    try {
      const ops = ls.flatMap((l, i) => [{ op: 'stat' as const, path: l.dir }, ...(i % 7 === 0 ? [{ op: 'stat' as const, path: `${l.dir}/missing` }] : [])]);
      const r = await helper.run([{ op: 'statfs', path: repo, required: true }, ...ops]);
      expect(r).toHaveLength(ops.length + 1);
      expect(r.slice(1).map((x) => x.ok)).toEqual(ops.map((o) => !o.path.endsWith('/missing')));
      expect(r[1]).toMatchObject({ ok: true, dir: true });
      const stop = await helper.run([
        { op: 'statfs', path: path.join(repo, 'nope'), required: true },
        { op: 'stat', path: ls[0]!.dir },
      ]);
      expect(stop).toEqual([expect.objectContaining({ ok: false, code: 'ENOENT' })]);
    } finally {
      helper.stop();
    }
  });

  it('a thin image is resolved from one probe batch (realpath of each layer, its marker); a layer that escapes the repository, is a file or is missing is named', async () => {
    const { work, repo, manifest } = fixture();
    const host = new RecordingHost();
    const stack = await openStack(work, repo, host, 'state');
    const ls = Array.from({ length: 6 }, (_, i) => addLayer(repo, `k${i}`, { [`f${i}`]: 'x' }, { converter: true }));
    const thinDir = (m: FakeLayer[]) => {
      const d = path.join(work, `thin-${Math.random().toString(36).slice(2)}`);
      mkdirSync(d);
      writeFileSync(path.join(d, 'thin.json'), thinJson(REPO, m));
      return d;
    };
    const r = await stack.linkThin(thinDir(ls), { snapshot: 'ok' });
    expect(r!.lowers.map((l) => l.dir)).toEqual(ls.map((l) => l.dir).reverse());
    expect(r!.how).toEqual(['overlay']);
    const batch = host.ops('probeFs').at(-1)!.args as string[];
    expect(batch.filter((a) => a.startsWith('realpath ')).length).toBe(7); // the mount and 6 layers
    expect(batch.filter((a) => a.startsWith('read ') && a.endsWith('cvmfs-thin-layer.json')).length).toBe(6);
    // hostile: a layer directory that is a symlink out of the repository, or a file
    const outside = path.join(work, 'elsewhere');
    mkdirSync(outside);
    renameSync(ls[2]!.dir, `${ls[2]!.dir}.away`);
    symlinkSync(outside, ls[2]!.dir);
    await expect(stack.linkThin(thinDir(ls), { snapshot: 'escape' })).rejects.toThrow(
      /layers\[2\]\.url: .* resolves to .*elsewhere, outside repository unpacked\.cern\.ch/,
    );
    rmSync(ls[2]!.dir);
    writeFileSync(ls[2]!.dir, 'not a dir');
    await expect(stack.linkThin(thinDir(ls), { snapshot: 'file' })).rejects.toThrow(/layers\[2\]\.url: .* is not a directory/);
    rmSync(ls[2]!.dir);
    await expect(stack.linkThin(thinDir(ls), { snapshot: 'gone' })).rejects.toThrow(/layers\[2\]\.url: layer .* does not exist in CVMFS/);
    void manifest;
  });

  it("a stack with our chain is resolved from the chain alone: one probe asks for the chain, its marker and dirty marker, nothing about a layer; the marker's xattrs become copies above it", async () => {
    const { work, repo } = fixture();
    const host = new RecordingHost();
    const stack = await openStack(work, repo, host, 'state');
    const ls = Array.from({ length: 40 }, (_, i) => addLayer(repo, `c${i}`, { [`f${i}`]: 'x' }, { converter: true }));
    const ids = duccChainIds(ls.map((l) => l.hex));
    const chain = chainDir(repo, ids.at(-1)!);
    mkdirSync(path.join(chain, 'bin'), { recursive: true });
    writeFileSync(path.join(chain, 'bin/ping'), 'ping');
    writeFileSync(path.join(chain, '.cvmfscatalog'), '');
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex').toString('base64');
    const marker = (record: unknown, id = ids.at(-1)!) =>
      writeFileSync(
        path.join(chain, '.cvmfs-thin-chain.json'),
        JSON.stringify({ schema: 'cvmfs-thin/chain', chain: id, layers: ls.map((l) => l.hex), created: 'now', record }),
      );
    marker({ xattrs: [{ path: 'bin/ping', name: 'security.capability', value: cap }], hidden: ['.cvmfscatalog', '.cvmfs-thin-chain.json'] });
    let n = 0;
    const thinDir = () => {
      const d = path.join(work, `thin-${n++}`);
      mkdirSync(d);
      writeFileSync(path.join(d, 'thin.json'), thinJson(REPO, ls));
      return d;
    };
    const r = await stack.linkThin(thinDir(), { snapshot: 'chain' });
    expect(r!.how).toEqual(['mask-above', 'chain']);
    expect(r!.lowers.map((l) => l.dir).at(-1)).toBe(chain);
    const probes = host.ops('probeFs').map((o) => o.args as string[]);
    expect(probes.flat().filter((a) => a.includes('/.layers/'))).toEqual([]);
    expect(probes.flat().filter((a) => a.startsWith('read '))).toEqual([`read ${chain}/.cvmfs-thin-chain.json`]);
    const above = r!.lowers[0]!.dir;
    expect(readdirSync(above).sort()).toEqual(['.cvmfs-thin-chain.json', '.cvmfscatalog', 'bin']);
    // the copy of bin/ping above the chain got the recorded capability (masks are built beside and renamed into place)
    expect(host.ops('lsetxattr').map((o) => [path.basename(String(o.args[0])), o.args[1]])).toContainEqual(['ping', 'security.capability']);
    // a chain marked dirty, or one that resolves outside the repository: the layers, one by one
    mkdirSync(dirtyChainMarker(repo, ids.at(-1)!), { recursive: true });
    expect((await stack.linkThin(thinDir(), { snapshot: 'dirty' }))!.lowers).toHaveLength(40);
    rmSync(dirtyChainMarker(repo, ids.at(-1)!), { recursive: true });
    const outside = path.join(work, 'outside-chain');
    renameSync(chain, outside);
    symlinkSync(outside, chain);
    expect((await stack.linkThin(thinDir(), { snapshot: 'escape' }))!.lowers).toHaveLength(40);
    rmSync(chain);
    renameSync(outside, chain);
    // a hostile record in a new chain's marker is refused, naming the file and the field
    rmSync(path.join(work, 'state', 'facts.json'), { force: true });
    const other = await openStack(work, repo, host, 'state2');
    marker({ xattrs: [{ path: '../../etc/passwd', name: 'user.x', value: '' }] });
    await expect(other.linkThin(thinDir(), { snapshot: 'hostile' })).rejects.toThrow(/chain record .*\.cvmfs-thin-chain\.json: record\.xattrs\[0\]\.path/);
    // a marker for another chain is not ours: the chain is taken as DUCC's (its layers carry our markers: nothing walked)
    marker({ xattrs: [] }, ids[0]!);
    const third = await openStack(work, repo, host, 'state3');
    expect((await third.linkThin(thinDir(), { snapshot: 'foreign' }))!.how).toEqual(['mask-above', 'chain']);
  });
});
