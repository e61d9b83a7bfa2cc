/**
 * The graph driver plugin's edge: the GraphDriver interface's routes on the
 * shared Docker plugin transport (edge/plugin-http.ts: HTTP/1.1 on a unix
 * socket, JSON bodies, `{"Err": "..."}` errors, graceful stop). ApplyDiff
 * reads its body as a stream; Diff answers a raw tar.
 */
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/cvmfs/location.js';
import { toThinError } from '../core/errors/errors.js';
import { type Host, systemHost } from '../core/host/host.js';
import { type Metrics, noMetrics } from '../core/telemetry/metrics.js';
import { type PluginInterface, type PluginServer, type Route, type RouteContext, servePlugin, STREAMED } from '../edge/plugin-http.js';
import { GraphDriver, type GraphDriverConfig } from './driver.js';
import type { IdmapMode } from './options.js';
import { METHODS, parseApplyDiffQuery, parseInitRequest, parseLayerRequest } from './protocol.js';

export interface GraphDriverDaemonOptions {
  socket: string;
  stateDir: string;
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
  log: Logger;
  /** Default: the real one. */
  host?: Host;
  /** Default: records nothing. */
  metrics?: Metrics | undefined;
  /** Deadline of questions to CVMFS (default 10 s); period of the check of mounted layers on a dead CVMFS (default 30 s, 0: never). */
  cvmfsTimeoutMs?: number | undefined;
  checkIntervalMs?: number | undefined;
  /** Container starts: access-profile prefetch, the slow-start budget. */
  starts?: GraphDriverConfig['starts'];
  /** More plugin interfaces on the same socket (the volume plugin: one driver name for both), closed after the driver. */
  also?: { interfaces: PluginInterface[]; close(): Promise<void> } | undefined;
}

export interface RunningGraphDriver {
  driver: GraphDriver;
  server: PluginServer['server'];
  /** Stop serving; never unmounts or deletes layer data. */
  stop(): Promise<void>;
}

/** Mounts held for dockerd: layers got and not put (the driver's "Mounted Layers"; 0 before Init). */
function mountsHeld(driver: GraphDriver): number {
  const v = driver.status().find(([k]) => k === 'Mounted Layers')?.[1];
  return v === undefined ? 0 : Number(v);
}

/** Count what the routes did (thin layers resolved, CVMFS unavailable) without touching the driver. */
function counted(driver: GraphDriver, routes: Record<string, Route>, m: Metrics): Record<string, Route> {
  if (!m.enabled) return routes;
  const out: Record<string, Route> = {};
  for (const [name, r] of Object.entries(routes)) {
    out[name] = async (c) => {
      try {
        const res = await r(c);
        if (name === 'ApplyDiff') {
          const id = c.url.searchParams.get('id');
          if (id !== null && driver.exists(id) && driver.getMetadata(id)['CvmfsThinImage'] === 'true')
            m.inc('thin_images_resolved_total', { daemon: 'graphdriver' });
        }
        return res;
      } catch (e) {
        if (['CVMFS_THIN_LAYER_UNAVAILABLE', 'CVMFS_THIN_CVMFS_STALLED'].includes(toThinError(e).code))
          m.inc('cvmfs_unavailable_total', { daemon: 'graphdriver' });
        throw e;
      }
    };
  }
  return out;
}

/** The GraphDriver interface (docker.graphdriver/1.0) over a driver. */
function graphDriverInterface(driver: GraphDriver, metrics: Metrics = noMetrics): PluginInterface {
  const layer = async (c: RouteContext) => parseLayerRequest(await c.json());
  const routes: Record<string, Route> = {
    Init: async (c) => {
      await driver.init(parseInitRequest(await c.json()));
      return {};
    },
    Capabilities: async () => ({ Capabilities: driver.capabilities() }),
    Status: async () => ({ Status: driver.status() }),
    Cleanup: async () => {
      await driver.cleanup();
      return {};
    },
    Create: async (c) => {
      const r = await layer(c);
      await driver.create(r.id, r.parent, false, r.storageOpt);
      return {};
    },
    CreateReadWrite: async (c) => {
      const r = await layer(c);
      await driver.create(r.id, r.parent, true, r.storageOpt);
      return {};
    },
    Remove: async (c) => {
      await driver.remove((await layer(c)).id);
      return {};
    },
    Get: async (c) => {
      const r = await layer(c);
      return { Dir: await driver.get(r.id, r.mountLabel) };
    },
    Put: async (c) => {
      await driver.put((await layer(c)).id);
      return {};
    },
    Exists: async (c) => ({ Exists: driver.exists((await layer(c)).id) }),
    GetMetadata: async (c) => ({ Metadata: driver.getMetadata((await layer(c)).id) }),
    Changes: async (c) => {
      const r = await layer(c);
      return { Changes: await driver.changes(r.id, r.parent) };
    },
    DiffSize: async (c) => {
      const r = await layer(c);
      return { Size: await driver.diffSize(r.id, r.parent) };
    },
    Diff: async (c) => {
      const r = await layer(c);
      const tar = await driver.diff(r.id, r.parent);
      c.res.writeHead(200, { 'Content-Type': 'application/x-tar' });
      await pipeline(tar, c.res);
      return STREAMED;
    },
    // the body is the layer tar, streamed; the parameters are in the query
    ApplyDiff: async (c) => {
      const q = parseApplyDiffQuery(c.url.searchParams);
      return { Size: await driver.applyDiff(q.id, q.parent, c.req) };
    },
  };
  for (const m of METHODS) {
    if (m.startsWith('GraphDriver.') && !routes[m.slice('GraphDriver.'.length)]) throw new Error(`no route for ${m}`);
  }
  return { name: 'GraphDriver', routes: counted(driver, routes, metrics) };
}

export async function startGraphDriver(o: GraphDriverDaemonOptions): Promise<RunningGraphDriver> {
  const log = o.log;
  const driver = await GraphDriver.open({
    stateDir: o.stateDir,
    location: o.location,
    thinImages: o.thinImages,
    idmappedLayers: o.idmappedLayers,
    host: o.host ?? systemHost,
    socket: o.socket,
    log,
    metrics: o.metrics,
    cvmfsTimeoutMs: o.cvmfsTimeoutMs,
    checkIntervalMs: o.checkIntervalMs,
    starts: o.starts,
  });
  let p: PluginServer;
  try {
    const metrics = o.metrics ?? noMetrics;
    metrics.onCollect(() => metrics.set('mounts_held', { daemon: 'graphdriver' }, mountsHeld(driver)));
    const close = async () => {
      await driver.close();
      await o.also?.close();
    };
    p = await servePlugin({
      socket: o.socket,
      interfaces: [graphDriverInterface(driver, metrics), ...(o.also?.interfaces ?? [])],
      log,
      close,
      metrics,
      daemon: 'graphdriver',
    });
  } catch (e) {
    await driver.close();
    await o.also?.close();
    throw e;
  }
  log.info(
    { socket: o.socket, stateDir: o.stateDir, home: driver.home ?? null, repository: o.location.repository, mountpoint: o.location.absoluteMountpoint },
    'graph driver plugin serving',
  );
  return {
    driver,
    server: p.server,
    async stop() {
      await p.stop();
      log.info('graph driver plugin stopped; layers and mounts kept');
    },
  };
}
