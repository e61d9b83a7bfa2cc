/**
 * The shared Docker plugin transport (src/edge/plugin-http.ts) over a real
 * unix socket, without root: several interfaces on one socket, the error
 * mapping, body limits, streaming both ways, socket housekeeping and stop.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../../src/core/errors/errors.js';
import { silentLogger } from '../../src/core/telemetry/log.js';
import { MAX_JSON_BODY, type PluginServer, readBody, servePlugin, STREAMED, toHttpError } from '../../src/edge/plugin-http.js';
import { tempDir } from '../helpers/env.js';
import { pluginCall } from '../graphdriver/harness.js';

describe('plugin HTTP transport (no root)', () => {
  const dir = tempDir('plugin-http-');
  const socket = path.join(dir, 'multi.sock');
  let srv: PluginServer;
  let closed = 0;
  let logs = '';
  const call = (m: string, body?: unknown, o?: Parameters<typeof pluginCall>[3]) => pluginCall(socket, m, body, o);

  beforeAll(async () => {
    srv = await servePlugin({
      socket,
      log: pino({ level: 'info' }, { write: (l: string) => void (logs += l) }),
      close: async () => {
        closed++;
      },
      interfaces: [
        {
          name: 'VolumeDriver',
          routes: {
            Echo: async (c) => ({ Got: await c.json() }),
            Empty: async () => undefined,
            Throw: async (c) => {
              const kind = String((await c.json())['Kind']);
              const errors: Record<string, Error> = {
                invalid: new InvalidArgumentError('bad name "x"'),
                missing: new NotFoundError('no such volume'),
                exists: new AlreadyExistsError('already there'),
                precondition: new FailedPreconditionError('not yet'),
                unavailable: new UnavailableError('cvmfs down'),
                plain: new Error('boom'),
                blank: new InvalidArgumentError('  '),
              };
              throw errors[kind];
            },
            Sync: () => {
              throw new InvalidArgumentError('thrown before any await');
            },
          },
        },
        {
          name: 'GraphDriver',
          routes: {
            // a raw request body (ApplyDiff) and a raw answer (Diff)
            Count: async (c) => ({ Size: (await readBody(c.req, 64 << 20)).length, Query: c.url.searchParams.get('id') }),
            Stream: async (c) => {
              c.res.writeHead(200, { 'Content-Type': 'application/x-tar' });
              c.res.end(Buffer.alloc(100_000, 7));
              return STREAMED;
            },
            // ApplyDiff whose tar stream fails half-way: pipeline() destroys the request
            Cut: async (c) => {
              for await (const _ of c.req) break;
              c.req.destroy();
              throw new InvalidArgumentError('bad tar');
            },
            NoRead: async () => {
              throw new InvalidArgumentError('refused without reading the body');
            },
          },
        },
      ],
    });
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it('answers Plugin.Activate with every interface it serves, on one socket', async () => {
    const r = await call('Plugin.Activate');
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({ Implements: ['VolumeDriver', 'GraphDriver'] });
    expect(r.body.toString().endsWith('\n')).toBe(true);
    expect((await call('VolumeDriver.Echo', { Name: 'a' })).json()).toEqual({ Got: { Name: 'a' } });
    expect((await call('VolumeDriver.Empty', {})).json()).toEqual({});
  });

  it('maps each error kind to one status with an Err body (the message as it is) and a Code field', async () => {
    const cases: [string, number, string, string][] = [
      ['invalid', 400, 'bad name "x"', 'CVMFS_THIN_INVALID_ARGUMENT'],
      ['missing', 404, 'no such volume', 'CVMFS_THIN_NOT_FOUND'],
      ['exists', 409, 'already there', 'CVMFS_THIN_ALREADY_EXISTS'],
      ['precondition', 412, 'not yet', 'CVMFS_THIN_FAILED_PRECONDITION'],
      ['unavailable', 503, 'cvmfs down', 'CVMFS_THIN_UNAVAILABLE'],
      ['plain', 500, 'boom', 'CVMFS_THIN_INTERNAL'],
      ['blank', 400, 'CVMFS_THIN_INVALID_ARGUMENT (no message)', 'CVMFS_THIN_INVALID_ARGUMENT'],
    ];
    for (const [kind, status, err, code] of cases) {
      const r = await call('VolumeDriver.Throw', { Kind: kind });
      expect([kind, r.status, r.json()]).toEqual([kind, status, { Err: err, Code: code }]);
    }
    const s = await call('VolumeDriver.Sync', {});
    expect([s.status, s.json()]).toEqual([400, { Err: 'thrown before any await', Code: 'CVMFS_THIN_INVALID_ARGUMENT' }]);
    expect(toHttpError(new UnavailableError('x', 'CVMFS_THIN_MOUNT_FAILED')).body).toEqual({ Err: 'x', Code: 'CVMFS_THIN_MOUNT_FAILED' });
    // every line about a failed request carries the code
    const lines = logs
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const failed = lines.filter((l) => l['method'] === 'VolumeDriver.Throw' && l['msg'] === 'request');
    expect(failed.map((l) => [l['status'], l['code']])).toEqual(cases.map(([, status, , code]) => [status, code]));
    expect(lines.find((l) => l['msg'] === 'internal error')).toMatchObject({ method: 'VolumeDriver.Throw', code: 'CVMFS_THIN_INTERNAL' });
  });

  it("refuses unknown methods, other interfaces' names, GET, bad JSON and oversized bodies", async () => {
    const u = await call('VolumeDriver.Nope', {});
    expect(u.status).toBe(404);
    expect(u.json()['Err']).toBe('unknown plugin method "VolumeDriver.Nope" (this plugin implements VolumeDriver, GraphDriver)');
    expect((await call('NetworkDriver.Echo', {})).status).toBe(404);
    expect((await call('', {})).status).toBe(404);
    const bad = await call('VolumeDriver.Echo', undefined, { raw: Buffer.from('{"Name":') });
    expect(bad.status).toBe(400);
    expect(bad.json()['Err']).toMatch(/^request body is not valid JSON/);
    expect((await call('VolumeDriver.Echo', undefined, { raw: Buffer.from('[1,2]') })).json()['Err']).toBe('request body must be a JSON object');
    expect((await call('VolumeDriver.Echo', undefined, { raw: Buffer.from('null') })).json()).toEqual({ Got: {} });
    const big = await call('VolumeDriver.Echo', undefined, { raw: Buffer.alloc(MAX_JSON_BODY + 10, 0x20), chunked: true });
    expect(big.status).toBe(400);
    expect(big.json()['Err']).toBe(`request body of ${MAX_JSON_BODY + 10} bytes is larger than ${MAX_JSON_BODY}`);
    const get = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const s = net.connect(socket, () => s.end('GET /VolumeDriver.Echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      let b = '';
      s.on('data', (d) => (b += d.toString()));
      s.on('end', () => resolve({ status: Number(b.split(' ')[1]), body: b }));
      s.on('error', reject);
    });
    expect(get.status).toBe(400);
    expect(get.body).toContain('VolumeDriver.Echo must be called with POST, not GET');
  });

  it('lets a route read a streamed body and write a raw answer; an unread body is drained before an error', async () => {
    const data = Buffer.alloc(3 << 20, 1);
    const r = await call('GraphDriver.Count', undefined, { raw: Readable.from([data.subarray(0, 1 << 20), data.subarray(1 << 20)]), query: 'id=abc' });
    expect(r.json()).toEqual({ Size: 3 << 20, Query: 'abc' });
    const s = await call('GraphDriver.Stream', {});
    expect([s.status, s.body.length, s.body[99_999]]).toEqual([200, 100_000, 7]);
    const n = await call('GraphDriver.NoRead', undefined, { raw: Buffer.alloc(2 << 20, 2), chunked: true });
    expect([n.status, n.json()]).toEqual([400, { Err: 'refused without reading the body', Code: 'CVMFS_THIN_INVALID_ARGUMENT' }]);
    // a body cut by the route: the answer cannot be sent, the connection is closed rather than left hanging
    const chunks = Array.from({ length: 64 }, () => Buffer.alloc(64 << 10, 3));
    await expect(call('GraphDriver.Cut', undefined, { raw: Readable.from(chunks) })).rejects.toThrow();
    // the server still answers afterwards
    expect((await call('Plugin.Activate')).status).toBe(200);
  });

  it('refuses a live socket and anything that is not a socket; replaces a stale one', async () => {
    await expect(servePlugin({ socket, interfaces: [], log: silentLogger() })).rejects.toThrow(/another process is already serving/);
    const file = path.join(dir, 'file.sock');
    writeFileSync(file, 'x');
    await expect(servePlugin({ socket: file, interfaces: [], log: silentLogger() })).rejects.toThrow(/exists and is not a socket/);
    // a stale socket: bound by a server that went away without removing it
    const stale = path.join(dir, 'stale.sock');
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise((r) => child.stdout!.once('data', r));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(stale)).toBe(true);
    const again = await servePlugin({ socket: stale, interfaces: [{ name: 'VolumeDriver', routes: {} }], log: silentLogger() });
    expect((await pluginCall(stale, 'Plugin.Activate')).json()).toEqual({ Implements: ['VolumeDriver'] });
    await again.stop();
    expect(existsSync(stale)).toBe(false);
  });

  it('refuses bad interface tables', async () => {
    const log = silentLogger();
    await expect(servePlugin({ socket: path.join(dir, 'x.sock'), interfaces: [{ name: 'Plugin', routes: {} }], log })).rejects.toThrow(
      /bad plugin interface name/,
    );
    await expect(
      servePlugin({
        socket: path.join(dir, 'y.sock'),
        interfaces: [
          { name: 'A', routes: { X: async () => 1 } },
          { name: 'A', routes: { X: async () => 2 } },
        ],
        log,
      }),
    ).rejects.toThrow(/defined twice/);
  });

  it('stop() closes the state once, removes the socket and is idempotent', async () => {
    const sock = path.join(dir, 'stop.sock');
    let n = 0;
    const s = await servePlugin({ socket: sock, interfaces: [], log: silentLogger(), close: async () => void n++ });
    expect((await pluginCall(sock, 'Plugin.Activate')).json()).toEqual({ Implements: [] });
    await Promise.all([s.stop(), s.stop()]);
    expect(n).toBe(1);
    expect(existsSync(sock)).toBe(false);
    await expect(pluginCall(sock, 'Plugin.Activate')).rejects.toThrow();
    expect(closed).toBe(0);
  });
});
