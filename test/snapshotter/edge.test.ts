/**
 * The gRPC edge in-process, unprivileged (recording host): metrics recorded
 * per RPC and result code and what the snapshotter did (thin, remote, CVMFS
 * unavailable, journal), filters that cannot stall the daemon, List replies
 * bounded by bytes, the per-snapshot label cap.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { type ServiceError, status } from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cvmfsLocation } from '../../src/core/cvmfs/location.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { createRegistry, type Metrics } from '../../src/core/telemetry/metrics.js';
import { LIST_BATCH_BYTES } from '../../src/snapshotter/list-batches.js';
import { MAX_LABELS_TOTAL } from '../../src/snapshotter/labels.js';
import { MetaStore } from '../../src/snapshotter/metastore.js';
import { type RunningDaemon, startSnapshotter } from '../../src/snapshotter/server.js';
import { LABEL_LAYER_DIGEST, LABEL_SNAPSHOT_REF } from '../../src/snapshotter/snapshotter.js';
import { addLayer, thinJson } from '../helpers/cvmfs-tree.js';
import { tempDir } from '../helpers/env.js';
import { grpcCode, type Info, SnapClient } from '../helpers/grpc.js';
import { RecordingHost } from '../helpers/recording-host.js';
import { metricValue } from '../e2e/metrics-scrape.js';

const REPO = 'unpacked.cern.ch';

describe('snapshotter gRPC edge (unprivileged)', () => {
  const base = tempDir('sn-edge-');
  const repoRoot = path.join(base, 'cvmfs', REPO);
  mkdirSync(repoRoot, { recursive: true });
  let daemon: RunningDaemon;
  let c: SnapClient;
  let metrics: Metrics;
  let text: () => Promise<string>;
  let logs = '';
  const value = async (name: string, labels: Record<string, string> = {}) => metricValue(await text(), `cvmfs_thin_${name}`, labels);

  beforeAll(async () => {
    const r = await createRegistry({ defaultMetrics: false });
    metrics = r.metrics;
    text = () => r.registry.metrics();
    const address = path.join(base, 'edge.sock');
    daemon = await startSnapshotter({
      address,
      root: path.join(base, 'root'),
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(base, 'cvmfs') }),
      thinImages: true,
      remoteLayers: true,
      log: pino({ level: 'debug' }, { write: (l: string) => void (logs += l) }),
      host: new RecordingHost(),
      metrics,
    });
    c = new SnapClient(address);
  });
  afterAll(async () => {
    c?.close();
    await daemon?.stop();
  });

  it('counts RPCs by method and gRPC status name, snapshots by kind and source, journal commits', async () => {
    expect(await grpcCode(c.stat('nope'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.stat('nope'))).toBe(status.NOT_FOUND);
    await c.prepare('m-a');
    expect(await grpcCode(c.prepare('m-a'))).toBe(status.ALREADY_EXISTS);
    await c.list();
    expect(await grpcCode(c.list('name~="(a)\\\\1"'))).toBe(status.INVALID_ARGUMENT);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'Stat', code: 'NOT_FOUND' })).toBe(2);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'Prepare', code: 'OK' })).toBe(1);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'Prepare', code: 'ALREADY_EXISTS' })).toBe(1);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'List', code: 'OK' })).toBe(1);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'List', code: 'INVALID_ARGUMENT' })).toBe(1);
    expect(await value('request_duration_seconds_count', { daemon: 'snapshotter', method: 'Stat' })).toBe(2);
    expect(await value('snapshots', { kind: 'active', source: 'local' })).toBe(1);
    expect(await value('snapshots', { kind: 'committed', source: 'thin' })).toBe(0);
    expect(await value('journal_commit_seconds_count', { store: 'snapshotter' })).toBeGreaterThanOrEqual(1);
    expect(await value('journal_batch_records_sum', { store: 'snapshotter' })).toBeGreaterThanOrEqual(1);
    await c.remove('m-a');
    expect(await value('snapshots', { kind: 'active', source: 'local' })).toBe(0);
  });

  it('answers the CVMFS_THIN_* code in the trailing metadata and logs it with the status name; the message is what containerd shows', async () => {
    const fail = (p: Promise<unknown>) =>
      p.then(
        () => expect.unreachable(),
        (e: unknown) => e as ServiceError,
      );
    const e = await fail(c.stat('code-nope'));
    expect([e.code, e.details]).toEqual([status.NOT_FOUND, 'snapshot code-nope does not exist']);
    expect(e.metadata.get('cvmfs-thin-code')).toEqual(['CVMFS_THIN_NO_SUCH_SNAPSHOT']);
    // the List stream's error too
    const l = await fail(c.list('kind=='));
    expect(l.code).toBe(status.INVALID_ARGUMENT);
    expect(l.metadata.get('cvmfs-thin-code')).toEqual([expect.stringMatching(/^CVMFS_THIN_(?!INTERNAL$)[A-Z_]+$/)]);
    const lines = logs
      .trim()
      .split('\n')
      .map((x) => JSON.parse(x) as Record<string, unknown>)
      .filter((x) => x['msg'] === 'rpc failed');
    expect(lines.find((x) => x['key'] === 'code-nope')).toMatchObject({ method: 'Stat', code: 'CVMFS_THIN_NO_SUCH_SNAPSHOT', status: 'NOT_FOUND' });
    expect(lines.findLast((x) => x['method'] === 'List')).toMatchObject({ code: l.metadata.get('cvmfs-thin-code')[0], status: 'INVALID_ARGUMENT' });
  });

  it('counts thin images resolved, remote layers served and fallen back, and CVMFS unavailable', async () => {
    const conv = addLayer(repoRoot, 'edge-thin', { f: 'x' }, { converter: true });
    const [m] = await c.prepare('t-x');
    writeFileSync(path.join(m!.source, 'thin.json'), thinJson(REPO, [conv]));
    await c.commit('t-thin', 't-x');
    expect(await value('thin_images_resolved_total', { daemon: 'snapshotter' })).toBe(1);
    expect(await value('snapshots', { kind: 'committed', source: 'thin' })).toBe(1);

    const remote = addLayer(repoRoot, 'edge-remote', { r: 'x' });
    const labels = (ref: string, hex: string) => ({ [LABEL_SNAPSHOT_REF]: ref, [LABEL_LAYER_DIGEST]: `sha256:${hex}` });
    expect(await grpcCode(c.prepare('r-1', '', labels('chain-1', remote.hex)))).toBe(status.ALREADY_EXISTS);
    await c.prepare('r-2', '', labels('chain-2', 'e'.repeat(64)));
    expect(await value('remote_layers_total', { result: 'served' })).toBe(1);
    expect(await value('remote_layers_total', { result: 'fallback' })).toBe(1);
    expect(await value('snapshots', { kind: 'committed', source: 'remote' })).toBe(1);

    renameSync(conv.dir, `${conv.dir}.gone`);
    expect(await grpcCode(c.prepare('t-ctr', 't-thin'))).toBe(status.UNAVAILABLE);
    renameSync(`${conv.dir}.gone`, conv.dir);
    expect(await value('cvmfs_unavailable_total', { daemon: 'snapshotter' })).toBe(1);
    expect(await value('requests_total', { daemon: 'snapshotter', method: 'Prepare', code: 'UNAVAILABLE' })).toBe(1);
  });

  it('a pathological ~= pattern neither stalls the daemon nor delays a concurrent Stat', async () => {
    const long = 'a'.repeat(40);
    await c.prepare(long);
    // exponential for a backtracking engine (2^40 steps per name): RE2 answers in linear time
    const order: string[] = [];
    const list = c.list('name~="^(a+)+$"', 'name~="^(a|aa)+$"').then((r) => (order.push('list'), r));
    const stat = c.stat(long).then((r) => (order.push('stat'), r));
    const [listed, info] = await Promise.all([list, stat]);
    expect(listed.map((i) => i.name)).toEqual([long]);
    expect(info.name).toBe(long);
    expect(order.sort()).toEqual(['list', 'stat']);
    const none = await c.list(`name~="^(a+)+$"`, `labels.x~="^(a+)+b$"`);
    expect(none.map((i) => i.name)).toEqual([long]);
  });

  it('caps the label bytes of one snapshot (key and value bytes summed), naming the totals', async () => {
    const big = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${String(i).padStart(3, '0')}`, 'v'.repeat(4000)]));
    const max = Math.floor(MAX_LABELS_TOTAL / 4004);
    await c.prepare('cap-ok', '', big(max));
    const err = await c.prepare('cap-big', '', big(max + 1)).catch((e: Error & { code: number }) => e);
    expect((err as { code: number }).code).toBe(status.INVALID_ARGUMENT);
    expect((err as Error).message).toMatch(new RegExp(`labels of snapshot cap-big total \\d+ bytes .*maximum of ${MAX_LABELS_TOTAL} bytes`));
    expect(await grpcCode(c.stat('cap-big'))).toBe(status.NOT_FOUND);
    expect(await grpcCode(c.update({ name: 'cap-ok', labels: { extra: 'v'.repeat(4000) } }, ['labels.extra']))).toBe(status.INVALID_ARGUMENT);
    expect(Object.keys((await c.stat('cap-ok')).labels)).toHaveLength(max);
    await c.prepare('cap-base');
    expect(await grpcCode(c.commit('cap-c', 'cap-base', big(max + 1)))).toBe(status.INVALID_ARGUMENT);
    await c.remove('cap-ok');
  });
});

describe('List replies bounded by bytes (unprivileged)', () => {
  const base = tempDir('sn-edge-list-');
  it('lists snapshots with multi-MB labels (records from before the cap) in replies under the message limit', async () => {
    const root = path.join(base, 'root');
    // records as an older version could write them: 12 snapshots with 3 MiB of labels each (36 MiB in all)
    const store = await MetaStore.open(path.join(root, 'metadata'), (e) => {
      throw e;
    });
    const labels = Object.fromEntries(Array.from({ length: 768 }, (_, i) => [`big.${i}`, 'x'.repeat(4090)]));
    for (let i = 0; i < 12; i++) {
      const id = store.allocId();
      await store.write({
        put: [
          {
            name: `big-${String(i).padStart(2, '0')}`,
            kind: 'committed',
            parent: '',
            id,
            created: [1, 0],
            updated: [1, 0],
            labels,
            size: 0,
            inodes: 0,
            links: {},
            stack: [],
            terminal: false,
            source: 'local',
          },
        ],
      });
    }
    await store.close();
    const address = path.join(base, 'list.sock');
    const daemon = await startSnapshotter({
      address,
      root,
      location: cvmfsLocation({ repository: REPO, cvmfsRoot: path.join(base, 'cvmfs') }),
      thinImages: true,
      remoteLayers: true,
      log: silentLogger(),
      host: new RecordingHost(),
    });
    const c = new SnapClient(address);
    try {
      const replies: Info[][] = [];
      const all = await new Promise<Info[]>((resolve, reject) => {
        const out: Info[] = [];
        const s = c.raw.list({ snapshotter: 't', filters: [] });
        s.on('data', (r: { info: Info[] }) => (replies.push(r.info), out.push(...r.info)));
        s.on('error', reject);
        s.on('end', () => resolve(out));
      });
      expect(all.map((i) => i.name)).toEqual(Array.from({ length: 12 }, (_, i) => `big-${String(i).padStart(2, '0')}`));
      expect(all.every((i) => Object.keys(i.labels).length === 768 && i.labels['big.7'] === 'x'.repeat(4090))).toBe(true);
      // each reply under the byte budget: one 3 MiB snapshot per reply here
      const perReply = Math.floor(LIST_BATCH_BYTES / (768 * 4100));
      expect(replies.length).toBe(Math.ceil(12 / Math.max(1, perReply)));
      expect(replies.every((r) => r.length <= Math.max(1, perReply))).toBe(true);
      // a filtered List of the same store too
      expect((await c.list('name==big-03')).map((i) => i.name)).toEqual(['big-03']);
    } finally {
      c.close();
      await daemon.stop();
    }
  });
});
