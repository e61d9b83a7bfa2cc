/**
 * Container starts in the graph driver (issue 18) without root: dockerd's
 * calls for a start (CreateReadWrite of `<m>-init`, Get/Put of it,
 * CreateReadWrite of `<m>`, Get of `<m>`) traced like the snapshotter's
 * Prepare, the image's access profile read ahead from its ApplyDiff through
 * the host's probe (here the recording host, real files), the trace keyed by
 * the Docker container ID read from dockerd's layer database beside Home.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { findTrace, formatTrace } from '../../src/cli/why-slow.js';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { type StartTrace, traceFile } from '../../src/core/stack/start-trace.js';
import { createRegistry } from '../../src/core/telemetry/metrics.js';
import { PROFILE_SCHEMA, profilePath, serializeProfile, type AccessProfile } from '../../src/core/thin/profile.js';
import { GraphDriver, type GraphDriverConfig } from '../../src/graphdriver/driver.js';
import { addLayer, type FakeLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { runCli } from '../helpers/daemon.js';
import { tempDir } from '../helpers/env.js';
import { tarOf, type TarEntry } from '../helpers/oci-image.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { metricValue } from '../e2e/metrics-scrape.js';

const REPO = 'unpacked.cern.ch';
const ID = (n: number) => n.toString(16).padStart(64, '0');
const CID = 'c0ffee'.padEnd(64, '1');
const IMG = ID(1);
const M = ID(0xa0);

describe('graph driver container starts: traces and access-profile prefetch (unprivileged, recording host)', () => {
  const base = tempDir('gd-starts-');
  let n = 0;
  let dir: string;
  let dockerRoot: string;
  let state: string;
  let repo: string;
  let host: RecordingHost;
  let gd: GraphDriver;
  let logs: Record<string, unknown>[];
  let layers: FakeLayer[];
  let metrics: () => Promise<string>;

  const open = async (starts: GraphDriverConfig['starts'] = {}) => {
    const log = pino({ level: 'info' }, new Writable({ write: (c, _e, cb) => (logs.push(JSON.parse(String(c)) as Record<string, unknown>), cb()) }));
    const r = await createRegistry({ defaultMetrics: false });
    metrics = () => r.registry.metrics();
    gd = await GraphDriver.open({
      stateDir: state,
      location: cvmfsLocation({ absoluteMountpoint: repo }),
      thinImages: true,
      idmappedLayers: 'off',
      host,
      log,
      metrics: r.metrics,
      starts,
    });
    // dockerd's Home for `-s cvmfs`: <data-root>/cvmfs
    await gd.init({ home: path.join(dockerRoot, 'cvmfs'), opts: [], uidMaps: [], gidMaps: [] });
  };
  const apply = async (id: string, entries: TarEntry[]) => gd.applyDiff(id, '', Readable.from([await tarOf(entries)]));
  const thinImage = async (id = IMG) => {
    await gd.create(id, '', false, {});
    await apply(id, [{ path: 'thin.json', content: thinJson(REPO, layers) }]);
  };
  /** dockerd's layer database: container → mount ID (written after the container layer's CreateReadWrite). */
  const layerdb = (container: string, mount: string) => {
    const d = path.join(dockerRoot, 'image', 'cvmfs', 'layerdb', 'mounts', container);
    mkdirSync(d, { recursive: true });
    writeFileSync(path.join(d, 'mount-id'), mount);
    writeFileSync(path.join(d, 'init-id'), `${mount}-init`);
  };
  /** What dockerd does for `docker run` of image layer `top`: init layer, container layer, the container's mount. */
  const run = async (mount: string, top: string, container?: string) => {
    await gd.create(`${mount}-init`, top, true, {});
    await gd.get(`${mount}-init`);
    await gd.put(`${mount}-init`);
    await gd.create(mount, `${mount}-init`, true, {});
    if (container) layerdb(container, mount);
    return gd.get(mount);
  };
  const traces = () => path.join(state, 'traces');
  const trace = (key: string) => JSON.parse(readFileSync(traceFile(traces(), key), 'utf8')) as StartTrace;
  const profile = (files: AccessProfile['files'], extra: Partial<AccessProfile> = {}): AccessProfile => ({
    schema: PROFILE_SCHEMA,
    version: 1,
    layers: layers.map((l) => l.hex),
    prefetch: true,
    created: new Date().toISOString(),
    files,
    ...extra,
  });
  const publish = (p: AccessProfile) => {
    const f = path.join(repo, profilePath(layers.map((l) => l.hex)));
    mkdirSync(path.dirname(f), { recursive: true });
    writeFileSync(f, serializeProfile(p));
  };
  const reads = () =>
    host
      .ops('probeFs')
      .flatMap((c) => (c.args as string[]).filter((a) => a.startsWith('read ')).map((a) => a.slice(5)))
      // the profile, and the hot layer's image probed beside it (hot-image.ts): not read-ahead
      .filter((r) => !/\.(json|erofs|erofs-data)$/.test(r));

  beforeEach(() => {
    dir = path.join(base, String(n++));
    dockerRoot = path.join(dir, 'docker');
    state = path.join(dir, 'state');
    repo = path.join(dir, 'cvmfs', REPO);
    mkdirSync(repo, { recursive: true });
    host = new RecordingHost();
    logs = [];
    layers = [
      addLayer(repo, `base${n}`, { 'bin/sh': 'shell', 'etc/passwd': 'root:x:0:0' }, { converter: true }),
      addLayer(repo, `app${n}`, { 'app/main.py': 'print(1)' }, { converter: true }),
    ];
  });
  afterEach(async () => {
    await gd.close();
  });

  it("traces a container's start from its init layer to its first mount, with the read-ahead from the image's ApplyDiff on; why-slow finds it by container ID, prefix or layer ID", async () => {
    await open({ budgetMs: 100_000 });
    publish(
      profile([
        { path: 'bin/sh', layer: layers[0]!.hex, size: 5 },
        { path: 'app/main.py', layer: layers[1]!.hex, size: 8 },
        { path: 'app/gone.py', layer: layers[1]!.hex, size: 3 },
      ]),
    );
    await thinImage();
    await gd.startsIdle();
    // read at the load (ApplyDiff of the thin layer), before any container
    expect(reads()).toEqual([path.join(layers[0]!.dir, 'bin/sh'), path.join(layers[1]!.dir, 'app/main.py'), path.join(layers[1]!.dir, 'app/gone.py')]);
    // docker create: nothing traced until the container's root is mounted
    await gd.create(`${M}-init`, IMG, true, {});
    await gd.get(`${M}-init`);
    await gd.put(`${M}-init`);
    await gd.create(M, `${M}-init`, true, {});
    layerdb(CID, M);
    await gd.startsIdle();
    expect(existsSync(traces()) ? readdirSync(traces()) : []).toEqual([]);
    // docker start
    await gd.get(M);
    await gd.startsIdle();
    const t = trace(`${CID}/${M}`);
    expect(t).toMatchObject({
      schema: 'cvmfs-thin/start-trace',
      snapshot: `${CID}/${M}`,
      container: CID,
      daemon: 'graphdriver',
      image: IMG,
      origin: 'test',
      layers: 2,
      profile: 'repository',
      budgetMs: 100_000,
    });
    expect(Object.keys(t.phases).sort()).toEqual(['create', 'cvmfs', 'mount', 'resolve']);
    expect(t.prefetch).toMatchObject({ files: 2, bytes: 13, missing: 1, failed: 0 });
    expect(Date.parse(t.prefetchStarted!)).toBeLessThanOrEqual(Date.parse(t.started));
    expect(t.verdict).toMatch(/^within budget; .* ms of our own work .*; prefetch read 2 file\(s\)/);
    // the histograms have the driver's phases; the read-ahead was not repeated for the container
    const text = await metrics();
    for (const phase of ['create', 'cvmfs', 'mount', 'resolve'])
      expect([phase, metricValue(text, 'cvmfs_thin_start_phase_seconds_count', { daemon: 'graphdriver', phase })]).toEqual([phase, 1]);
    expect(metricValue(text, 'cvmfs_thin_prefetch_files_total', { result: 'read' })).toBe(2);
    expect(reads().filter((r) => r.endsWith('main.py'))).toHaveLength(1);
    // a second Get (docker exec, a restart) is not a new start
    await gd.put(M);
    await gd.get(M);
    await gd.startsIdle();
    expect(readdirSync(traces())).toHaveLength(1);
    // why-slow: the container ID, a prefix of it (docker ps shows 12 characters), the layer ID or a prefix
    for (const id of [CID, CID.slice(0, 12), M, M.slice(0, 60)]) expect([id, (await findTrace(traces(), id)).snapshot]).toEqual([id, `${CID}/${M}`]);
    const out = formatTrace(t);
    expect(out).toMatch(/^start of c0ffee1+\/0+a0 \(graphdriver\) at .*: image test \(layer 0+1\), 2 layer\(s\)\n {2}container: c0ffee1+\n/);
    expect(out).toMatch(/ {4}create +[\d.]+ ms {2}its init and container layers made/);
    const cli = await runCli(['why-slow', '--state-dir', state, CID.slice(0, 12), '--json']);
    expect([cli.code, JSON.parse(cli.out).container]).toEqual([0, CID]);
  });

  it("without dockerd's layer database the key is the layer ID; a slow start logs why; a container removed before its start, and an ordinary image, leave no trace", async () => {
    await open({ budgetMs: 1, prefetch: false });
    await thinImage();
    // a container created and removed without a start
    await gd.create(`${ID(0xb0)}-init`, IMG, true, {});
    await gd.create(ID(0xb0), `${ID(0xb0)}-init`, true, {});
    await gd.remove(ID(0xb0));
    await gd.remove(`${ID(0xb0)}-init`);
    // an ordinary image
    await gd.create(ID(2), '', false, {});
    await apply(ID(2), [{ path: 'f', content: 'x' }]);
    await run(ID(0xc0), ID(2));
    // hold the CVMFS check of the container's layers for a while at its mount: a slow start
    await gd.create(`${M}-init`, IMG, true, {});
    await gd.get(`${M}-init`);
    await gd.put(`${M}-init`);
    await gd.create(M, `${M}-init`, true, {});
    host.stalled.add(layers[1]!.dir);
    const p = gd.get(M);
    await new Promise((r) => setTimeout(r, 30));
    host.unstall();
    await p;
    await gd.startsIdle();
    expect(readdirSync(traces())).toEqual([`${M}.json`]);
    const t = trace(M);
    expect(t).toMatchObject({ snapshot: M, daemon: 'graphdriver', image: IMG, profile: 'none' });
    expect(t.container).toBeUndefined();
    expect(t.phases['cvmfs']).toBeGreaterThanOrEqual(25);
    const warn = logs.find((l) => String(l['msg']).startsWith('slow start: over the 1 ms budget'));
    expect(warn).toMatchObject({ level: 40, snapshot: M, image: IMG, layers: 2 });
    expect(reads()).toEqual([]); // --no-prefetch: nothing read ahead
    expect((await findTrace(traces(), M.slice(0, 12))).snapshot).toBe(M);
  });
});
