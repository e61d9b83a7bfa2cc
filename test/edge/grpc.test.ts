/**
 * The gRPC server kit (src/edge/grpc.ts) over a real unix socket, without
 * root: a protocol's status table as data, the code in the trailing metadata
 * and in the log line, UNIMPLEMENTED methods, and the stop deadline.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { credentials, makeGenericClientConstructor, type ServiceDefinition, type ServiceError, status } from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InternalError, NotFoundError, UnavailableError } from '../../src/core/errors/errors.js';
import { CODE_METADATA_KEY } from '../../src/edge/error-policy.js';
import { grpcEdge, type GrpcServing, type GrpcStatusTable, KIND_STATUS, serveGrpc, statusOf } from '../../src/edge/grpc.js';
import { SNAPSHOTTER_STATUSES } from '../../src/snapshotter/grpc-errors.js';
import { CSI_STATUSES } from '../../src/csi/grpc-errors.js';
import { tempDir } from '../helpers/env.js';

type Msg = { v?: string };
const json = {
  requestSerialize: (m: Msg) => Buffer.from(JSON.stringify(m)),
  requestDeserialize: (b: Buffer) => JSON.parse(b.toString()) as Msg,
  responseSerialize: (m: Msg) => Buffer.from(JSON.stringify(m)),
  responseDeserialize: (b: Buffer) => JSON.parse(b.toString()) as Msg,
};
const method = (name: string) => ({ path: `/test.Kit/${name}`, requestStream: false, responseStream: false, ...json });
const KIT_SERVICE = { Echo: method('Echo'), Throw: method('Throw'), Slow: method('Slow'), Expand: method('Expand') } as ServiceDefinition;
const Client = makeGenericClientConstructor(KIT_SERVICE, 'Kit');

/** Like a protocol whose internal errors are UNKNOWN and one code has its own status. */
const TABLE: GrpcStatusTable = {
  kinds: { ...KIND_STATUS, internal: status.UNKNOWN },
  codes: { CVMFS_THIN_SHUTTING_DOWN: status.ABORTED },
  errnos: { ENOSPC: status.RESOURCE_EXHAUSTED },
};

const THROWN: Record<string, () => unknown> = {
  missing: () => new NotFoundError('no snapshot "x"'),
  precondition: () => new FailedPreconditionError('x is committed', 'CVMFS_THIN_NOT_STAGED'),
  internal: () => new InternalError('a bug'),
  plain: () => new Error('plain trouble'),
  enospc: () => Object.assign(new Error('ENOSPC: no space left on device, mkdir /x'), { code: 'ENOSPC' }),
  override: () => new UnavailableError('stopping', 'CVMFS_THIN_SHUTTING_DOWN'),
};

describe('gRPC server kit', () => {
  const dir = tempDir('cvmfs-thin-grpc-kit-');
  const socket = path.join(dir, 'kit.sock');
  let logs = '';
  let served: GrpcServing;
  let closed = 0;
  let client: InstanceType<typeof Client>;
  let releaseSlow = () => {};

  const call = (name: string, req: Msg = {}) =>
    new Promise<{ res?: Msg; err?: ServiceError }>((resolve) => {
      (client as unknown as Record<string, (r: Msg, cb: (e: ServiceError | null, r?: Msg) => void) => void>)[name]!(req, (err, res) =>
        resolve(err ? { err } : { res: res! }),
      );
    });
  const lines = () =>
    logs
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  beforeAll(async () => {
    const log = pino({ level: 'debug' }, { write: (l: string) => void (logs += l) });
    const edge = grpcEdge({ daemon: 'kit', log, statuses: TABLE, refusedLevel: 'warn' });
    served = await serveGrpc({
      socket,
      services: () => [
        [
          KIT_SERVICE,
          {
            Echo: edge.unary<Msg, Msg>(
              'Echo',
              (r) => ({ v: r.v }),
              (r) => ({ v: r.v }),
            ),
            Throw: edge.unary<Msg, Msg>(
              'Throw',
              (r) => ({ v: r.v }),
              async (r) => {
                throw THROWN[r.v!]!();
              },
            ),
            Slow: edge.unary<Msg, Msg>(
              'Slow',
              () => ({}),
              () => new Promise<Msg>((resolve) => (releaseSlow = () => resolve({ v: 'late' }))),
            ),
            Expand: edge.unimplemented('Expand', 'volumes have no size'),
          },
        ],
      ],
      close: async () => void closed++,
      stopDeadlineMs: 300,
    });
    client = new Client(`unix://${socket}`, credentials.createInsecure());
  });
  afterAll(async () => {
    client?.close();
    await served?.stop();
  });

  it('answers through the wrapper and logs the call at debug', async () => {
    expect((await call('Echo', { v: 'hi' })).res).toEqual({ v: 'hi' });
    expect(lines().find((l) => l['method'] === 'Echo')).toMatchObject({ msg: 'rpc', v: 'hi', level: 20 });
  });

  it.each([
    ['missing', status.NOT_FOUND, 'CVMFS_THIN_NOT_FOUND', 'no snapshot "x"', 'warn'],
    ['precondition', status.FAILED_PRECONDITION, 'CVMFS_THIN_NOT_STAGED', 'x is committed', 'warn'],
    ['internal', status.UNKNOWN, 'CVMFS_THIN_INTERNAL', 'a bug', 'error'],
    ['plain', status.UNKNOWN, 'CVMFS_THIN_INTERNAL', 'plain trouble', 'error'],
    ['enospc', status.RESOURCE_EXHAUSTED, 'CVMFS_THIN_INTERNAL', 'ENOSPC: no space left on device, mkdir /x', 'error'],
    ['override', status.ABORTED, 'CVMFS_THIN_SHUTTING_DOWN', 'stopping', 'warn'],
  ] as const)('%s: status from the table, the message as it is, the code in the trailing metadata and the log line', async (v, st, code, message, level) => {
    const { err } = await call('Throw', { v });
    expect([err?.code, err?.details]).toEqual([st, message]);
    expect(err?.metadata.get(CODE_METADATA_KEY)).toEqual([code]);
    const line = lines().findLast((l) => l['method'] === 'Throw');
    expect(line).toMatchObject({ msg: 'rpc failed', v, code, status: status[st], level: pino.levels.values[level] });
    expect(typeof line?.['ms']).toBe('number');
    expect(typeof line?.['at']).toBe('number');
  });

  it('a method the server does not serve: UNIMPLEMENTED with the unknown-method code, logged at debug', async () => {
    const { err } = await call('Expand');
    expect([err?.code, err?.details]).toEqual([status.UNIMPLEMENTED, 'Expand is not implemented: volumes have no size']);
    expect(err?.metadata.get(CODE_METADATA_KEY)).toEqual(['CVMFS_THIN_UNKNOWN_METHOD']);
    expect(lines().findLast((l) => l['method'] === 'Expand')).toMatchObject({ code: 'CVMFS_THIN_UNKNOWN_METHOD', status: 'UNIMPLEMENTED', level: 20 });
  });

  it("each protocol's table: containerd's UNKNOWN and RESOURCE_EXHAUSTED, CSI's INTERNAL", () => {
    const internal = new InternalError('x');
    expect(statusOf(SNAPSHOTTER_STATUSES, internal, internal)).toBe(status.UNKNOWN);
    expect(statusOf(CSI_STATUSES, internal, internal)).toBe(status.INTERNAL);
    const full = new InternalError('journal', 'CVMFS_THIN_IO_ENOSPC');
    expect(statusOf(SNAPSHOTTER_STATUSES, full, full)).toBe(status.RESOURCE_EXHAUSTED);
    expect(statusOf(CSI_STATUSES, full, full)).toBe(status.INTERNAL);
    const raw = Object.assign(new Error('EDQUOT'), { code: 'EDQUOT' });
    expect(statusOf(SNAPSHOTTER_STATUSES, raw, new InternalError('EDQUOT'))).toBe(status.RESOURCE_EXHAUSTED);
    // an errno name that is also an Object.prototype key is not a table entry
    const odd = Object.assign(new Error('odd'), { code: 'constructor' });
    expect(statusOf(SNAPSHOTTER_STATUSES, odd, new InternalError('odd'))).toBe(status.UNKNOWN);
  });

  it('stop() gives running calls the deadline, then cuts them; closes the state once, removes the socket, is idempotent', async () => {
    void call('Slow');
    await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    const [a, b] = await Promise.all([served.stop(), served.stop()]);
    expect([a, b]).toEqual([undefined, undefined]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(3000);
    // (the cut call's client learns it when the daemon's process exits)
    releaseSlow();
    expect(closed).toBe(1);
    expect(existsSync(socket)).toBe(false);
  });

  it('a service that cannot be made closes the state and leaves no server', async () => {
    let shut = 0;
    await expect(
      serveGrpc({
        socket: path.join(dir, 'broken.sock'),
        services: () => {
          throw new Error('no node');
        },
        close: async () => void shut++,
      }),
    ).rejects.toThrow('no node');
    expect(shut).toBe(1);
  });
});
