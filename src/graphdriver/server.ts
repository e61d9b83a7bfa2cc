/**
 * The graph driver plugin's HTTP/1.1 edge on a unix socket (node:http: dockerd
 * sends no Content-Type, streams ApplyDiff bodies chunked and reads Diff as a
 * raw tar). Every answer is JSON except Diff; every error is a non-200 with
 * `{"Err": "..."}` (http-errors.ts).
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { CvmfsLocation } from '../core/config.js';
import { InvalidArgumentError, NotFoundError, toThinError } from '../core/errors.js';
import { prepareSocket } from '../core/socket.js';
import { GraphDriver } from './driver.js';
import { toHttpError } from './http-errors.js';
import type { IdmapMode } from './options.js';
import {
  isMethod,
  MAX_JSON_BODY,
  type Method,
  parseApplyDiffQuery,
  parseInitRequest,
  parseJsonBody,
  parseLayerRequest,
  PLUGIN_CONTENT_TYPE,
} from './protocol.js';

export interface GraphDriverDaemonOptions {
  socket: string;
  stateDir: string;
  location: CvmfsLocation;
  thinImages: boolean;
  idmappedLayers: IdmapMode;
  log: Logger;
}

export interface RunningGraphDriver {
  driver: GraphDriver;
  server: http.Server;
  /** Stop serving; never unmounts or deletes layer data. */
  stop(): Promise<void>;
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': PLUGIN_CONTENT_TYPE, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_JSON_BODY) {
      // keep reading so that the client sees our answer, but keep nothing
      chunks.length = 0;
      continue;
    }
    chunks.push(c as Buffer);
  }
  if (n > MAX_JSON_BODY) throw new InvalidArgumentError(`request body of ${n} bytes is larger than ${MAX_JSON_BODY}`, 'CVMFS_THIN_BAD_REQUEST');
  return Buffer.concat(chunks);
}

/** Handle one plugin request. Exported for tests (any req/res pair). */
export function createHandler(driver: GraphDriver, log: Logger): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    const started = process.hrtime.bigint();
    const url = new URL(req.url ?? '/', 'http://plugin');
    const name = url.pathname.replace(/^\/+/, '');
    const done = (status: number, extra: Record<string, unknown> = {}) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      log[status === 200 ? 'debug' : 'warn']({ method: name, status, ms: Math.round(ms * 10) / 10, ...extra }, 'request');
    };
    const fail = (e: unknown, method: string) => {
      const h = toHttpError(e);
      done(h.status, { err: h.body.Err, code: h.code });
      if (toThinError(e).kind === 'internal') log.error({ err: e, method }, 'internal error');
      if (res.headersSent) {
        // a stream already started (Diff): all we can do is cut it, dockerd sees a truncated tar
        res.destroy(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      send(res, h.status, h.body);
    };
    if (!isMethod(name)) {
      req.resume();
      req.once('end', () => fail(new NotFoundError(`unknown plugin method ${JSON.stringify(name)}`, 'CVMFS_THIN_UNKNOWN_METHOD'), name));
      return;
    }
    if (req.method !== 'POST') {
      req.resume();
      req.once('end', () => fail(new InvalidArgumentError(`${name} must be called with POST, not ${req.method}`, 'CVMFS_THIN_BAD_REQUEST'), name));
      return;
    }
    dispatch(driver, name, req, res, url).then(
      (r) => {
        if (r === 'streamed') return done(200);
        send(res, 200, r);
        done(200);
      },
      (e: unknown) => fail(e, name),
    );
  };
}

async function dispatch(
  driver: GraphDriver,
  method: Method,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  url: URL,
): Promise<unknown> {
  if (method === 'GraphDriver.ApplyDiff') {
    let q;
    try {
      q = parseApplyDiffQuery(url.searchParams);
    } catch (e) {
      req.resume();
      await new Promise((r) => req.once('end', r));
      throw e;
    }
    const size = await driver.applyDiff(q.id, q.parent, req);
    return { Size: size };
  }
  const body = parseJsonBody(await readBody(req));
  switch (method) {
    case 'Plugin.Activate':
      return { Implements: ['GraphDriver'] };
    case 'GraphDriver.Init':
      await driver.init(parseInitRequest(body));
      return {};
    case 'GraphDriver.Capabilities':
      return { Capabilities: driver.capabilities() };
    case 'GraphDriver.Status':
      return { Status: driver.status() };
    case 'GraphDriver.Cleanup':
      await driver.cleanup();
      return {};
    default:
      break;
  }
  const r = parseLayerRequest(body);
  switch (method) {
    case 'GraphDriver.Create':
      await driver.create(r.id, r.parent, false, r.storageOpt);
      return {};
    case 'GraphDriver.CreateReadWrite':
      await driver.create(r.id, r.parent, true, r.storageOpt);
      return {};
    case 'GraphDriver.Remove':
      await driver.remove(r.id);
      return {};
    case 'GraphDriver.Get':
      return { Dir: await driver.get(r.id, r.mountLabel) };
    case 'GraphDriver.Put':
      await driver.put(r.id);
      return {};
    case 'GraphDriver.Exists':
      return { Exists: driver.exists(r.id) };
    case 'GraphDriver.GetMetadata':
      return { Metadata: driver.getMetadata(r.id) };
    case 'GraphDriver.Changes':
      return { Changes: await driver.changes(r.id, r.parent) };
    case 'GraphDriver.DiffSize':
      return { Size: await driver.diffSize(r.id, r.parent) };
    case 'GraphDriver.Diff': {
      const tar = await driver.diff(r.id, r.parent);
      res.writeHead(200, { 'Content-Type': 'application/x-tar' });
      await pipeline(tar, res);
      return 'streamed';
    }
    default:
      throw new NotFoundError(`unknown plugin method ${method}`);
  }
}

export async function startGraphDriver(o: GraphDriverDaemonOptions): Promise<RunningGraphDriver> {
  const log = o.log;
  const driver = await GraphDriver.open({
    stateDir: o.stateDir,
    location: o.location,
    thinImages: o.thinImages,
    idmappedLayers: o.idmappedLayers,
    log,
  });
  await prepareSocket(o.socket);
  // no timeouts: ApplyDiff bodies and Diff answers stream for as long as the layer takes
  const server = http.createServer({ requestTimeout: 0, keepAliveTimeout: 60_000 }, createHandler(driver, log));
  server.timeout = 0;
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.socket, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await fsp.chmod(o.socket, 0o660);
  log.info(
    { socket: o.socket, stateDir: o.stateDir, home: driver.home ?? null, repository: o.location.repository, mountpoint: o.location.absoluteMountpoint },
    'graph driver plugin serving',
  );
  let stopping: Promise<void> | null = null;
  return {
    driver,
    server,
    stop() {
      stopping ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          const t = setTimeout(() => {
            for (const s of sockets) s.destroy();
          }, 5000);
          t.unref();
        });
        // requests still running after that (a stuck mount, a huge ApplyDiff) must not keep the plugin alive
        let timer: NodeJS.Timeout | undefined;
        const drained = await Promise.race([
          driver.close().then(() => true),
          new Promise<boolean>((r) => {
            timer = setTimeout(() => r(false), 10_000);
          }),
        ]);
        clearTimeout(timer);
        if (!drained) log.warn('requests still running after 10 s; stopping anyway');
        await fsp.rm(o.socket, { force: true });
        log.info('graph driver plugin stopped; layers and mounts kept');
      })();
      return stopping;
    },
  };
}
