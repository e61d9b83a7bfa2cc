/**
 * The Docker plugin transport, shared by every plugin interface we serve
 * (VolumeDriver, GraphDriver): HTTP/1.1 `POST /<Interface>.<Method>` on a unix
 * socket (node:http: dockerd sends no Content-Type, may stream bodies chunked
 * and reads some answers raw), JSON bodies with a size cap, one error mapping
 * (`{"Err": "...", "Code": "CVMFS_THIN_..."}` with a non-200 status: the edges'
 * error policy, error-policy.ts), request logging and a graceful stop that
 * never touches mounts.
 *
 * Routes come in tables, one per interface, so that ONE socket can implement
 * several interfaces: `Plugin.Activate` answers `{"Implements": [...]}` with
 * every table's name. dockerd discovers plugins by socket name and CERN's
 * volume plugin and our graph driver both default to
 * /run/docker/plugins/cvmfs.sock.
 */
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { type ErrorCode, type ErrorKind, InvalidArgumentError, NotFoundError, toThinError } from '../core/errors/errors.js';
import { type Metrics, noMetrics, recordRequest } from '../core/telemetry/metrics.js';
import { prepareSocket } from '../core/host/socket.js';

/** The content type go-plugins-helpers answers with (dockerd does not check it). */
const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1.1+json';
/** JSON request bodies larger than this are refused (the largest real one is a few hundred bytes). */
export const MAX_JSON_BODY = 1 << 20;

// ---------------------------------------------------------------------------------------------
// errors: the one place where typed errors become plugin answers

const STATUS: Record<ErrorKind, number> = {
  'invalid-argument': 400,
  'not-found': 404,
  'already-exists': 409,
  'failed-precondition': 412,
  unavailable: 503,
  internal: 500,
};

export function httpStatus(kind: ErrorKind): number {
  return STATUS[kind];
}

interface HttpError {
  status: number;
  body: { Err: string; Code: ErrorCode };
  code: ErrorCode;
}

/**
 * Map anything thrown to a status and an `Err` body (never an empty message:
 * dockerd would fall back to the raw body). dockerd shows it as
 * `<Interface>.<Method>: <message>`; the status only matters to other clients
 * (dockerd treats every non-200 the same, except a 404 on Capabilities).
 * The code is a field of its own, `Code`: dockerd 20.10+ decodes `Err` only
 * (pkg/plugins/client.go, volume/drivers/proxy.go, daemon/graphdriver/proxy.go)
 * and matches no text in it, so `Err` stays the plain message.
 */
export function toHttpError(e: unknown): HttpError {
  const t = toThinError(e);
  const msg = t.message.trim() === '' ? `${t.code} (no message)` : t.message;
  return { status: STATUS[t.kind], body: { Err: msg, Code: t.code }, code: t.code };
}

// ---------------------------------------------------------------------------------------------
// requests

/** Parse a JSON request body; an empty body or `null` is `{}` (Plugin.Activate, Capabilities). */
export function parseJsonBody(body: Buffer | string): Record<string, unknown> {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  if (text.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError(`request body is not valid JSON: ${(e as Error).message}`, 'CVMFS_THIN_BAD_REQUEST');
  }
  if (v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new InvalidArgumentError('request body must be a JSON object', 'CVMFS_THIN_BAD_REQUEST');
  return v as Record<string, unknown>;
}

/** Read a whole request body, refusing more than `limit` bytes (the rest is drained, so the client sees the answer). */
export async function readBody(req: http.IncomingMessage, limit = MAX_JSON_BODY): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > limit) {
      chunks.length = 0;
      continue;
    }
    chunks.push(c as Buffer);
  }
  if (n > limit) throw new InvalidArgumentError(`request body of ${n} bytes is larger than ${limit}`, 'CVMFS_THIN_BAD_REQUEST');
  return Buffer.concat(chunks);
}

/** Write a JSON answer. */
function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'Content-Type': PLUGIN_CONTENT_TYPE, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** Returned by a route that wrote its answer itself (a raw stream such as GraphDriver.Diff). */
export const STREAMED: unique symbol = Symbol('plugin-http.streamed');

export interface RouteContext {
  /** `<Interface>.<Method>`. */
  method: string;
  req: http.IncomingMessage;
  res: http.ServerResponse;
  /** The request URL (ApplyDiff's parameters are in the query). */
  url: URL;
  /** The JSON body (read once, capped at MAX_JSON_BODY). A route that streams the body reads `req` instead. */
  json(): Promise<Record<string, unknown>>;
}

/** A route answers with a JSON value (status 200), or STREAMED, or throws a typed error. */
export type Route = (ctx: RouteContext) => Promise<unknown>;

export interface PluginInterface {
  /** What `Plugin.Activate` lists: `VolumeDriver`, `GraphDriver`. */
  name: string;
  /** Method name after the dot (`Create` serves `/<name>.Create`). */
  routes: Readonly<Record<string, Route>>;
}

type RequestHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** The request handler of a socket serving `interfaces`. Exported for tests (any req/res pair). */
function createPluginHandler(interfaces: readonly PluginInterface[], log: Logger, metrics: Metrics = noMetrics, daemon = 'plugin'): RequestHandler {
  const table = new Map<string, Route>();
  const implementsList = interfaces.map((i) => i.name);
  table.set('Plugin.Activate', async () => ({ Implements: implementsList }));
  for (const i of interfaces) {
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(i.name) || i.name === 'Plugin') throw new Error(`bad plugin interface name ${i.name}`);
    for (const [m, r] of Object.entries(i.routes)) {
      const full = `${i.name}.${m}`;
      if (table.has(full)) throw new Error(`route ${full} defined twice`);
      table.set(full, r);
    }
  }
  return (req, res) => {
    const started = process.hrtime.bigint();
    const url = new URL(req.url ?? '/', 'http://plugin');
    const method = url.pathname.replace(/^\/+/, '');
    const done = (status: number, extra: Record<string, unknown> = {}) => {
      recordRequest(metrics, daemon, table.has(method) ? method : 'unknown', started, status === 200 ? 'OK' : String(extra['code'] ?? status));
      const ms = Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10;
      // a refused request (bad name, unknown volume) is routine for dockerd's lookups; a 5xx is not
      const level = status === 200 ? 'debug' : status < 500 ? 'info' : 'warn';
      log[level]({ method, status, ms, ...extra }, 'request');
    };
    const fail = (e: unknown) => {
      const h = toHttpError(e);
      done(h.status, { err: h.body.Err, code: h.code });
      if (h.status === STATUS.internal) log.error({ err: e, method, code: h.code }, 'internal error');
      if (res.headersSent) {
        // a stream already started (Diff): all we can do is cut it, the client sees a truncated answer
        res.destroy(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      // a body the route did not read is drained, so that the client reads our answer
      if (!req.complete && !req.destroyed) {
        let answered = false;
        const answer = () => {
          if (answered) return;
          answered = true;
          if (req.complete) send(res, h.status, h.body);
          else res.destroy(); // the body was cut (a stream the route destroyed): nothing can be answered
        };
        req.once('end', answer);
        req.once('close', answer);
        req.resume();
        return;
      }
      if (req.destroyed && !req.complete) {
        res.destroy();
        return;
      }
      send(res, h.status, h.body);
    };
    const route = table.get(method);
    if (route === undefined) {
      fail(
        new NotFoundError(`unknown plugin method ${JSON.stringify(method)} (this plugin implements ${implementsList.join(', ')})`, 'CVMFS_THIN_UNKNOWN_METHOD'),
      );
      return;
    }
    if (req.method !== 'POST') {
      fail(new InvalidArgumentError(`${method} must be called with POST, not ${req.method}`, 'CVMFS_THIN_BAD_REQUEST'));
      return;
    }
    let body: Promise<Record<string, unknown>> | undefined;
    const ctx: RouteContext = { method, req, res, url, json: () => (body ??= readBody(req).then(parseJsonBody)) };
    let answer: Promise<unknown>;
    try {
      answer = route(ctx);
    } catch (e) {
      answer = Promise.reject(e);
    }
    answer.then((r) => {
      if (r === STREAMED) return done(200);
      if (!req.complete) req.resume();
      send(res, 200, r ?? {});
      done(200);
    }, fail);
  };
}

// ---------------------------------------------------------------------------------------------
// serving

interface PluginServerOptions {
  socket: string;
  interfaces: readonly PluginInterface[];
  log: Logger;
  /** Socket file mode (default 0660: root and the docker group). */
  mode?: number;
  /**
   * Called by stop() after the server stopped accepting: close the state
   * behind the routes (wait for running requests). Bounded by drainMs.
   */
  close?: () => Promise<void>;
  /** How long stop() waits for close() (default 10 s). */
  drainMs?: number;
  /** Requests are counted and timed here (default: nowhere). */
  metrics?: Metrics | undefined;
  /** The daemon's name in metrics. */
  daemon?: string | undefined;
}

export interface PluginServer {
  server: http.Server;
  socket: string;
  /** Stop serving (idempotent): close connections, wait for close() up to drainMs, remove the socket. Never unmounts. */
  stop(): Promise<void>;
}

/** Listen on a unix socket (replacing a stale one left by a crash, never a live one). */
export async function servePlugin(o: PluginServerOptions): Promise<PluginServer> {
  const { log } = o;
  await prepareSocket(o.socket);
  // no request timeouts: graph driver bodies and answers stream for as long as a layer takes
  const server = http.createServer({ requestTimeout: 0, keepAliveTimeout: 60_000 }, createPluginHandler(o.interfaces, log, o.metrics, o.daemon));
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
  await fsp.chmod(o.socket, o.mode ?? 0o660);
  let stopping: Promise<void> | null = null;
  return {
    server,
    socket: o.socket,
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
        if (o.close) {
          // requests still running (a stuck mount, a huge ApplyDiff) must not keep the plugin alive
          let timer: NodeJS.Timeout | undefined;
          const drained = await Promise.race([
            o.close().then(() => true),
            new Promise<boolean>((r) => {
              timer = setTimeout(() => r(false), o.drainMs ?? 10_000);
            }),
          ]);
          clearTimeout(timer);
          if (!drained) log.warn(`requests still running after ${(o.drainMs ?? 10_000) / 1000} s; stopping anyway`);
        }
        await fsp.rm(o.socket, { force: true });
      })();
      return stopping;
    },
  };
}
