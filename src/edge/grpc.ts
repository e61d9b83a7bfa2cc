/**
 * The gRPC server kit shared by the snapshotter (containerd's Snapshots
 * service) and the CSI plugin (csi.v1 Identity + Node): a unary call wrapper
 * (timing, request log, metrics, one error mapping), the mapping of our typed
 * errors to a gRPC status, and a server on a unix socket with a graceful stop
 * that has a deadline and never touches data. Each protocol passes its own
 * status choices as data (a GrpcStatusTable); nothing of a protocol is here.
 *
 * Errors follow the edges' policy (error-policy.ts): the status message is the
 * error's message, the code rides in the trailing metadata (`cvmfs-thin-code`)
 * and in the `code` field of the log line, beside the status name (`status`).
 */
import { promises as fsp } from 'node:fs';
import {
  type ChannelOptions,
  type handleUnaryCall,
  Metadata,
  type sendUnaryData,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServiceDefinition,
  type ServiceError,
  status,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { type ErrorCode, type ErrorKind, NotFoundError, type ThinError, toThinError } from '../core/errors/errors.js';
import { prepareSocket } from '../core/host/socket.js';
import { type Metrics, noMetrics, recordRequest } from '../core/telemetry/metrics.js';
import { CODE_METADATA_KEY } from './error-policy.js';

// ---------------------------------------------------------------------------------------------
// statuses

/** gRPC's own meaning of each kind (containerd's errdefs classes have the same names). */
export const KIND_STATUS: Readonly<Record<ErrorKind, status>> = {
  'invalid-argument': status.INVALID_ARGUMENT,
  'not-found': status.NOT_FOUND,
  'already-exists': status.ALREADY_EXISTS,
  'failed-precondition': status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  internal: status.INTERNAL,
};

/** How one protocol answers our errors. */
export interface GrpcStatusTable {
  /** The status of each kind. */
  readonly kinds: Readonly<Record<ErrorKind, status>>;
  /** Codes answered with another status than their kind's. */
  readonly codes?: Readonly<Partial<Record<ErrorCode, status>>>;
  /** Errors that are not ours (a raw errno error of a mkdir) answered by their errno name. */
  readonly errnos?: Readonly<Record<string, status>>;
}

/** Every protocol: a method the server does not serve is UNIMPLEMENTED (gRPC's own answer for an unknown method). */
const UNIVERSAL_CODES: Readonly<Partial<Record<ErrorCode, status>>> = { CVMFS_THIN_UNKNOWN_METHOD: status.UNIMPLEMENTED };

/** The status of an error under `table`; `t` is toThinError(e). */
export function statusOf(table: GrpcStatusTable, e: unknown, t: ThinError): status {
  const byCode = table.codes?.[t.code] ?? UNIVERSAL_CODES[t.code];
  if (byCode !== undefined) return byCode;
  if (table.errnos !== undefined && t !== e) {
    const errno = (e as NodeJS.ErrnoException | null)?.code;
    if (typeof errno === 'string' && Object.hasOwn(table.errnos, errno)) return table.errnos[errno]!;
  }
  return table.kinds[t.kind];
}

/** The error a handler answers with: the message as it is (containerd and kubelet show it), the code in the trailing metadata. */
function serviceError(code: status, t: ThinError): ServiceError {
  const err = new Error(t.message) as ServiceError;
  err.code = code;
  err.details = t.message;
  err.metadata = new Metadata();
  err.metadata.set(CODE_METADATA_KEY, t.code);
  return err;
}

// ---------------------------------------------------------------------------------------------
// calls

type Describe<Req> = (r: Req) => Record<string, unknown>;

interface GrpcEdgeOptions {
  /** The daemon's name in metrics (`snapshotter`, `csi`). */
  daemon: string;
  log: Logger;
  /** Requests are counted and timed here (default: nowhere). */
  metrics?: Metrics | undefined;
  statuses: GrpcStatusTable;
  /**
   * Log level of a failure that is not internal: containerd asks for missing
   * snapshots as a matter of course (debug), a kubelet call that fails is
   * worth a line (warn). Internal failures are errors, with the stack.
   */
  refusedLevel: 'debug' | 'info' | 'warn';
  /** Sees every failure (a protocol's own counters). */
  onFailure?: ((t: ThinError) => void) | undefined;
}

interface GrpcEdge {
  /**
   * A unary handler: `fn` answers or throws; `describe` gives the request's
   * log fields (never secrets), called only when a line is written.
   */
  unary<Req, Res>(method: string, describe: Describe<Req>, fn: (r: Req) => Promise<Res> | Res): handleUnaryCall<Req, Res>;
  /** A unary method this server does not serve (its capability is not advertised): UNIMPLEMENTED. */
  unimplemented<Req, Res>(method: string, why: string): handleUnaryCall<Req, Res>;
  /** The start of a call, for handlers of other shapes (streams): pass it to succeeded/failed. */
  begin(): CallStart;
  /** A call that answered: logged at debug and counted. */
  succeeded(method: string, start: CallStart, fields: Record<string, unknown>): void;
  /** A call that failed: logged, counted, and mapped to the error to answer with. */
  failed(method: string, start: CallStart, fields: Record<string, unknown>, e: unknown): ServiceError;
}

interface CallStart {
  /** performance.now() */
  t0: number;
  /** process.hrtime.bigint() when metrics are enabled, else 0n. */
  started: bigint;
}

export function grpcEdge(o: GrpcEdgeOptions): GrpcEdge {
  const { daemon, log, statuses, refusedLevel, onFailure } = o;
  const metrics = o.metrics ?? noMetrics;

  // describe() runs only when a line is written: the hot path allocates nothing for logs
  const done = <Req>(method: string, t0: number, started: bigint, describe: Describe<Req>, req: Req) => {
    // at: when the call reached the handler (ms since the epoch, µs resolution: bench/snapshotter-p99.ts)
    if (log.isLevelEnabled('debug'))
      log.debug({ method, ...safeDescribe(describe, req), at: +(performance.timeOrigin + t0).toFixed(3), ms: +(performance.now() - t0).toFixed(3) }, 'rpc');
    recordRequest(metrics, daemon, method, started, 'OK');
  };
  const fail = <Req>(method: string, t0: number, started: bigint, describe: Describe<Req>, req: Req, e: unknown, level?: 'debug'): ServiceError => {
    const t = toThinError(e);
    const st = statusOf(statuses, e, t);
    const name = status[st] ?? 'UNKNOWN';
    recordRequest(metrics, daemon, method, started, name);
    onFailure?.(t);
    const internal = t.kind === 'internal';
    const lvl = level ?? (internal ? 'error' : refusedLevel);
    if (log.isLevelEnabled(lvl)) {
      log[lvl](
        {
          method,
          ...safeDescribe(describe, req),
          code: t.code,
          status: name,
          at: +(performance.timeOrigin + t0).toFixed(3),
          ms: +(performance.now() - t0).toFixed(3),
          err: internal ? e : t.message,
        },
        'rpc failed',
      );
    }
    return serviceError(st, t);
  };
  const begin = (): CallStart => ({ t0: performance.now(), started: metrics.enabled ? process.hrtime.bigint() : 0n });

  function unary<Req, Res>(method: string, describe: Describe<Req>, fn: (r: Req) => Promise<Res> | Res): handleUnaryCall<Req, Res> {
    return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      const t0 = performance.now();
      const started = metrics.enabled ? process.hrtime.bigint() : 0n;
      const ok = (res: Res) => {
        done(method, t0, started, describe, call.request);
        cb(null, res);
      };
      const ko = (e: unknown) => cb(fail(method, t0, started, describe, call.request, e), null);
      let r: Promise<Res> | Res;
      try {
        r = fn(call.request);
      } catch (e) {
        ko(e);
        return;
      }
      if (r instanceof Promise) r.then(ok, ko);
      else ok(r);
    };
  }

  function unimplemented<Req, Res>(method: string, why: string): handleUnaryCall<Req, Res> {
    return (_call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
      const { t0, started } = begin();
      // refused by design: not worth more than a debug line
      const e = new NotFoundError(`${method} is not implemented: ${why}`, 'CVMFS_THIN_UNKNOWN_METHOD');
      cb(fail(method, t0, started, noFields, undefined, e, 'debug'), null);
    };
  }

  return {
    unary,
    unimplemented,
    begin,
    succeeded: (method, s, fields) => done(method, s.t0, s.started, asFields, fields),
    failed: (method, s, fields, e) => fail(method, s.t0, s.started, asFields, fields, e),
  };
}

const noFields = (): Record<string, unknown> => ({});
const asFields = (f: Record<string, unknown>) => f;

function safeDescribe<Req>(d: Describe<Req>, r: Req): Record<string, unknown> {
  try {
    return d(r);
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------------------------------------
// serving

type GrpcService = readonly [ServiceDefinition, UntypedServiceImplementation];

interface GrpcServeOptions {
  /** The unix socket path (a stale socket left by a crash is replaced, never a live one). */
  socket: string;
  /** The services, made once the socket is ready; a throw closes the state (close()). */
  services(): readonly GrpcService[];
  /** grpc-js server options (channelz is always off: its bookkeeping costs CPU on every call and nothing reads it). */
  options?: ChannelOptions;
  /** Socket file mode (default 0660: root and the socket's group). */
  mode?: number;
  /** Close the state behind the services: after the server stopped, or when it failed to start. */
  close(): Promise<void>;
  /** How long stop() lets running calls finish before cutting them (default 5 s). */
  stopDeadlineMs?: number;
  /** Called once, when stop() is done. */
  onStopped?: () => void;
}

export interface GrpcServing {
  server: Server;
  /** Stop serving (idempotent): running calls get stopDeadlineMs, then close() and the socket is removed. Never deletes or unmounts data. */
  stop(): Promise<void>;
}

export async function serveGrpc(o: GrpcServeOptions): Promise<GrpcServing> {
  const server = new Server({ ...o.options, 'grpc.enable_channelz': 0 });
  try {
    await prepareSocket(o.socket);
    for (const [def, impl] of o.services()) server.addService(def, impl);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${o.socket}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    await fsp.chmod(o.socket, o.mode ?? 0o660);
  } catch (e) {
    // nothing of the state is removed; its locks are released
    server.forceShutdown();
    await o.close();
    throw e;
  }
  let stopping: Promise<void> | null = null;
  return {
    server,
    stop() {
      stopping ??= (async () => {
        await stopServer(server, o.stopDeadlineMs ?? 5000);
        await o.close();
        await fsp.rm(o.socket, { force: true });
        o.onStopped?.();
      })();
      return stopping;
    },
  };
}

/** Let running calls finish, for at most `deadlineMs`; then cut them. */
function stopServer(server: Server, deadlineMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, deadlineMs);
    server.tryShutdown(() => {
      clearTimeout(t);
      resolve();
    });
  });
}
