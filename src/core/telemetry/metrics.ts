/**
 * Prometheus metrics and health endpoints for every daemon.
 *
 * The edges record through the small `Metrics` interface; `noMetrics` (the
 * default) does nothing, and prom-client is only loaded when a daemon is
 * started with `--metrics-address`, so a daemon without metrics pays neither
 * the memory nor the time. Recording is a counter increment and a histogram
 * observation per request (see bench/metrics.ts for its cost).
 *
 * Every name and label is listed in METRICS below and documented in
 * docs/metrics.md (generated from this list, checked by a test).
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { InvalidArgumentError } from '../errors/errors.js';
import { writeFileAtomic } from '../fs/fsutil.js';
import { prepareSocket } from '../host/socket.js';

type Kind = 'counter' | 'gauge' | 'histogram';

interface Def {
  kind: Kind;
  help: string;
  labels: readonly string[];
  buckets?: readonly number[];
}

const LATENCY = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 120];

/** Every metric the daemons and the converter export (without the `cvmfs_thin_` prefix). */
export const METRICS = {
  requests_total: {
    kind: 'counter',
    help: 'Requests answered, by daemon, method (RPC or endpoint) and result code (gRPC status name, or HTTP-style OK/error kind)',
    labels: ['daemon', 'method', 'code'],
  },
  request_duration_seconds: { kind: 'histogram', help: 'Request latency by daemon and method', labels: ['daemon', 'method'], buckets: LATENCY },
  snapshots: {
    kind: 'gauge',
    help: 'Snapshots held by the snapshotter, by kind (active, view, committed) and source (local, thin, remote)',
    labels: ['kind', 'source'],
  },
  thin_images_resolved_total: { kind: 'counter', help: 'Thin image layers (thin.json) resolved into CVMFS lower directories, by daemon', labels: ['daemon'] },
  remote_layers_total: {
    kind: 'counter',
    help: 'CRI-labelled layers: served from CVMFS (download skipped) or fallback (not in CVMFS: downloaded)',
    labels: ['result'],
  },
  cvmfs_unavailable_total: {
    kind: 'counter',
    help: 'Requests that failed because a CVMFS directory was not reachable (gone, client dead, or stalled past cvmfs-timeout), by daemon',
    labels: ['daemon'],
  },
  cvmfs_stalls_total: {
    kind: 'counter',
    help: 'Probes of a CVMFS mount that did not answer within cvmfs-timeout (a stalled client; while it stalls, one more per timeout), by daemon',
    labels: ['daemon'],
  },
  broken_mounts: {
    kind: 'gauge',
    help: 'Overlay mounts of running containers with a lower layer on a CVMFS mount that is dead (reason=not-connected: restart them) or stalled (reason=stalled), found by the last check',
    labels: ['daemon', 'reason'],
  },
  journal_commit_seconds: {
    kind: 'histogram',
    help: 'Durable journal group commits: time of the synchronous write',
    labels: ['store'],
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1],
  },
  journal_batch_records: { kind: 'histogram', help: 'Records per journal group commit', labels: ['store'], buckets: [1, 2, 4, 8, 16, 32, 64, 128] },
  mounts_held: { kind: 'gauge', help: 'Mounts the daemon holds for its clients (graph driver: layers got and not put; volumes: holders)', labels: ['daemon'] },
  volumes_mounted: { kind: 'gauge', help: 'Repository mounts of the volume manager, by backend (host, client, tree)', labels: ['daemon', 'backend'] },
  volume_repairs_total: { kind: 'counter', help: 'Broken (ENOTCONN) repository mounts mounted again', labels: ['daemon'] },
  start_phase_seconds: {
    kind: 'histogram',
    help: "Container starts: time of each phase of the daemon's work (resolve: a thin image's layers; the snapshotter's cvmfs, dirs, journal of the container's snapshot; the graph driver's create, cvmfs, mount of the container's layers; prefetch: its access profile read ahead), see cvmfs-thin why-slow",
    labels: ['daemon', 'phase'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120],
  },
  prefetch_files_total: {
    kind: 'counter',
    help: 'Files of access profiles prefetched, by result (read, missing: not in the image any more, failed)',
    labels: ['result'],
  },
  prefetch_bytes_total: { kind: 'counter', help: 'Bytes of access profiles read ahead from CVMFS (from its cache or the network)', labels: [] },
  start_cvmfs_download_bytes_total: {
    kind: 'counter',
    help: 'Bytes the CVMFS client downloaded during container starts (its user.rx attribute, from Prepare to the end of the prefetch)',
    labels: [],
  },
  convert_layers_total: {
    kind: 'counter',
    help: 'Converter: layers unpacked (result=converted) or found already present (result=present)',
    labels: ['result'],
  },
  convert_bytes_total: { kind: 'counter', help: 'Converter: compressed layer bytes read', labels: [] },
  convert_seconds_total: { kind: 'counter', help: 'Converter: wall time spent converting images', labels: [] },
  convert_images_total: { kind: 'counter', help: 'Converter: images converted, by result (ok, error, skipped)', labels: ['result'] },
} as const satisfies Record<string, Def>;

export type MetricName = keyof typeof METRICS;
export const PREFIX = 'cvmfs_thin_';

type LabelsOf<N extends MetricName> = (typeof METRICS)[N]['labels'][number];
export type Labels<N extends MetricName> = { [K in LabelsOf<N>]: string };

export interface Metrics {
  readonly enabled: boolean;
  inc<N extends MetricName>(name: N, labels: Labels<N>, by?: number): void;
  set<N extends MetricName>(name: N, labels: Labels<N>, value: number): void;
  observe<N extends MetricName>(name: N, labels: Labels<N>, value: number): void;
  /** Called before each scrape: set gauges from the daemon's state. */
  onCollect(fn: () => void): void;
}

/** Records nothing (daemons without --metrics-address; tests). */
export const noMetrics: Metrics = { enabled: false, inc() {}, set() {}, observe() {}, onCollect() {} };

/** Health: each check answers null (fine) or what is wrong. */
export type HealthCheck = () => Promise<string | null> | string | null;

interface MetricsServerOptions {
  /** `host:port`, `:port`, or an absolute unix socket path. */
  address: string;
  log: Logger;
  /** /healthz: the process can serve (store open). */
  live?: Record<string, HealthCheck>;
  /** /readyz: it is useful (store open, socket answers, CVMFS reachable). */
  ready?: Record<string, HealthCheck>;
}

export interface MetricsServer {
  metrics: Metrics;
  /** Where it listens (a port 0 address resolved). */
  address: string;
  stop(): Promise<void>;
}

type PromClient = typeof import('prom-client');

/** A registry with METRICS defined, and a Metrics recording into it. */
export async function createRegistry(opts: { defaultMetrics?: boolean } = {}): Promise<{ metrics: Metrics; registry: import('prom-client').Registry }> {
  const prom: PromClient = await import('prom-client');
  const registry = new prom.Registry();
  if (opts.defaultMetrics !== false) prom.collectDefaultMetrics({ register: registry, prefix: PREFIX });
  const collectors: (() => void)[] = [];
  const made = new Map<string, import('prom-client').Counter | import('prom-client').Gauge | import('prom-client').Histogram>();
  for (const [name, d] of Object.entries(METRICS) as [MetricName, Def][]) {
    const common = { name: PREFIX + name, help: d.help, labelNames: [...d.labels], registers: [registry] };
    if (d.kind === 'counter') made.set(name, new prom.Counter(common));
    else if (d.kind === 'gauge') made.set(name, new prom.Gauge(common));
    else made.set(name, new prom.Histogram({ ...common, buckets: [...(d.buckets ?? LATENCY)] }));
  }
  const get = (n: MetricName) =>
    made.get(n) as never as { inc(l: object, v?: number): void; set(l: object, v: number): void; observe(l: object, v: number): void };
  const metrics: Metrics = {
    enabled: true,
    inc: (n, l, by = 1) => get(n).inc(l, by),
    set: (n, l, v) => get(n).set(l, v),
    observe: (n, l, v) => get(n).observe(l, v),
    onCollect: (fn) => void collectors.push(fn),
  };
  // gauges are set from the daemon's state just before each scrape
  const origMetrics = registry.metrics.bind(registry);
  registry.metrics = async () => {
    for (const f of collectors) f();
    return origMetrics();
  };
  return { metrics, registry };
}

async function runChecks(checks: Record<string, HealthCheck> = {}): Promise<{ ok: boolean; checks: Record<string, string> }> {
  const out: Record<string, string> = {};
  let ok = true;
  for (const [name, fn] of Object.entries(checks)) {
    let r: string | null;
    try {
      r = await fn();
    } catch (e) {
      r = (e as Error).message;
    }
    out[name] = r ?? 'ok';
    if (r !== null) ok = false;
  }
  return { ok, checks: out };
}

/** Parse `host:port`, `:port` or a unix socket path. */
export function parseMetricsAddress(a: string): { socket: string } | { host: string; port: number } {
  if (path.isAbsolute(a)) return { socket: a };
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(a);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535)
    throw new InvalidArgumentError(`--metrics-address ${JSON.stringify(a)}: want host:port, :port or an absolute unix socket path`, 'CVMFS_THIN_BAD_FLAG');
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** Serve /metrics, /healthz and /readyz. */
export async function startMetricsServer(o: MetricsServerOptions): Promise<MetricsServer> {
  const where = parseMetricsAddress(o.address);
  const { metrics, registry } = await createRegistry();
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const reply = (status: number, type: string, body: string) => {
      res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'text/plain', 'GET only\n');
    if (url === '/metrics') {
      registry.metrics().then(
        (text) => reply(200, registry.contentType, text),
        (e: unknown) => reply(500, 'text/plain', `${(e as Error).message}\n`),
      );
      return;
    }
    if (url === '/healthz' || url === '/readyz') {
      runChecks(url === '/healthz' ? o.live : { ...o.live, ...o.ready }).then((r) =>
        reply(r.ok ? 200 : 503, 'application/json', `${JSON.stringify({ status: r.ok ? 'ok' : 'fail', checks: r.checks })}\n`),
      );
      return;
    }
    reply(404, 'text/plain', 'try /metrics, /healthz or /readyz\n');
  });
  if ('socket' in where) await prepareSocket(where.socket);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if ('socket' in where) server.listen(where.socket, resolve);
    else server.listen(where.port, where.host, resolve);
  });
  const addr = server.address();
  const address = typeof addr === 'string' ? addr : addr ? `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : o.address;
  o.log.info({ address }, 'metrics and health endpoints serving');
  return {
    metrics,
    address,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      if ('socket' in where) await fsp.rm(where.socket, { force: true });
    },
  };
}

/** Time a request and record it. */
export function recordRequest(m: Metrics, daemon: string, method: string, startedNs: bigint, code: string): void {
  if (!m.enabled) return;
  m.inc('requests_total', { daemon, method, code });
  m.observe('request_duration_seconds', { daemon, method }, Number(process.hrtime.bigint() - startedNs) / 1e9);
}

/** For the converter: write the registry in the text format, atomically (node_exporter's textfile collector). */
export async function writeTextfile(file: string, registry: import('prom-client').Registry): Promise<void> {
  if (!path.isAbsolute(file)) throw new InvalidArgumentError(`--metrics-textfile ${file} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await writeFileAtomic(file, await registry.metrics(), 0o644);
}

/** Is a unix socket answering? (for readiness checks) */
export function socketAnswers(socket: string, timeoutMs = 1000): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect(socket);
    const t = setTimeout(() => {
      s.destroy();
      resolve(`${socket}: no answer within ${timeoutMs} ms`);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      s.destroy();
      resolve(null);
    });
    s.once('error', (e) => {
      clearTimeout(t);
      resolve(`${socket}: ${e.message}`);
    });
  });
}
