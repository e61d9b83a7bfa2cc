/**
 * The registry client driven through an injected `fetch` (no network, no
 * daemon): the one retry policy (429 + Retry-After, 5xx, network errors,
 * giving up with an error naming the URL and the attempts, abort), token
 * fetching with retries, blob downloads resumed with Range requests, and
 * upload sessions restarted after a failure.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RegistryError } from '../../src/convert/errors.js';
import { type FetchFn, RegistryClient } from '../../src/convert/registry/client.js';
import { RETRY_STATUS, Retrier, retryDelay, RetryLater, withRetries } from '../../src/convert/registry/retry.js';
import { silentLogger } from '../../src/core/telemetry/log.js';

const REG = 'reg.example:5000';
const BASE = `https://${REG}`;
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Call {
  method: string;
  url: URL;
  headers: Record<string, string>;
}
type Answer = Response | Error;
type Handler = (call: Call, calls: Call[]) => Answer | Promise<Answer>;

/** A scripted fetch: /v2/ answers 200 unless the handler says otherwise; every call is recorded. */
function scripted(handler: Handler): { fetch: FetchFn; calls: Call[]; count: (re: RegExp) => number } {
  const calls: Call[] = [];
  const fetch: FetchFn = async (url, init) => {
    const call: Call = { method: init.method ?? 'GET', url: new URL(url), headers: { ...(init.headers as Record<string, string>) } };
    calls.push(call);
    const a = await handler(call, calls);
    if (a instanceof Error) throw a;
    return a;
  };
  return { fetch, calls, count: (re) => calls.filter((c) => re.test(`${c.method} ${c.url.pathname}`)).length };
}

function netError(code = 'ECONNRESET'): Error {
  return new TypeError('fetch failed', { cause: Object.assign(new Error(`read ${code}`), { code }) });
}

const MANIFEST = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}');
const manifestOk = () => new Response(MANIFEST, { status: 200, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });

function client(fetch: FetchFn, extra: Partial<ConstructorParameters<typeof RegistryClient>[0]> = {}): RegistryClient {
  return new RegistryClient({ registry: REG, credentials: null, log: silentLogger(), backoffMs: 1, retries: 2, fetch, ...extra });
}

afterEach(() => {
  vi.useRealTimers();
});

describe('registry client retries (injected fetch)', () => {
  it('waits exactly what Retry-After asks on 429, then succeeds', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const f = scripted((c) => {
      if (c.url.pathname === '/v2/') return new Response(null, { status: 200 });
      return f.count(/manifests/) === 1 ? new Response('slow down', { status: 429, headers: { 'retry-after': '2' } }) : manifestOk();
    });
    const p = client(f.fetch, { backoffMs: 10 }).getManifest('t/a', 'v1');
    await vi.advanceTimersByTimeAsync(1999);
    expect(f.count(/manifests/)).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(f.count(/manifests/)).toBe(2);
    expect((await p).digest).toBe(sha(MANIFEST));
  });

  it('retries 5xx and network errors, then gets the answer', async () => {
    const f = scripted((c) => {
      if (c.url.pathname === '/v2/') return new Response(null, { status: 200 });
      const n = f.count(/manifests/);
      if (n === 1) return new Response('bad gateway', { status: 502 });
      if (n === 2) return netError();
      return manifestOk();
    });
    expect((await client(f.fetch).getManifest('t/a', 'v1')).digest).toBe(sha(MANIFEST));
    expect(f.count(/manifests/)).toBe(3);
  });

  it('does not retry statuses that will not change (404, 400)', async () => {
    const f = scripted((c) =>
      c.url.pathname === '/v2/'
        ? new Response(null, { status: 200 })
        : new Response('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such tag"}]}', { status: 404 }),
    );
    await expect(client(f.fetch).getManifest('t/a', 'nope')).rejects.toThrow(/manifest nope: HTTP 404: MANIFEST_UNKNOWN: no such tag/);
    expect(f.count(/manifests/)).toBe(1);
  });

  it('gives up on a status after the last attempt and reports the status', async () => {
    const f = scripted((c) => (c.url.pathname === '/v2/' ? new Response(null, { status: 200 }) : new Response('down', { status: 503 })));
    const err = await client(f.fetch)
      .getManifest('t/a', 'v1')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).kind).toBe('unavailable');
    expect((err as RegistryError).status).toBe(503);
    expect((err as Error).message).toMatch(/reg\.example:5000\/t\/a: manifest v1: HTTP 503: down/);
    expect(f.count(/manifests/)).toBe(3);
  });

  it('gives up on network errors with an error naming the URL, the cause and the attempts', async () => {
    const f = scripted((c) => (c.url.pathname === '/v2/' ? new Response(null, { status: 200 }) : netError('ECONNREFUSED')));
    const err = await client(f.fetch)
      .getManifest('t/a', 'v1')
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe('CVMFS_THIN_REGISTRY');
    expect((err as RegistryError).kind).toBe('unavailable');
    expect((err as Error).message).toBe(`${REG}/t/a: manifest v1: GET ${BASE}/v2/t/a/manifests/v1: read ECONNREFUSED (after 3 attempts)`);
  });

  it('says it cannot connect to the registry, with the attempts and the --insecure hint', async () => {
    const f = scripted(() => netError('ECONNREFUSED'));
    await expect(client(f.fetch).getManifest('t/a', 'v1')).rejects.toThrow(
      `registry ${REG}: cannot connect to ${REG}: read ECONNREFUSED (after 3 attempts) (for a plain-HTTP registry use --insecure)`,
    );
    expect(f.calls.every((c) => c.url.protocol === 'https:')).toBe(true);
  });

  it('falls back from https to http at once for a loopback registry', async () => {
    const f = scripted((c) => {
      if (c.url.protocol === 'https:') return netError('EPROTO');
      return c.url.pathname === '/v2/' ? new Response(null, { status: 200 }) : manifestOk();
    });
    await client(f.fetch, { registry: '127.0.0.1:5000' }).getManifest('t/a', 'v1');
    expect(f.calls.map((c) => `${c.url.protocol}${c.url.pathname}`)).toEqual(['https:/v2/', 'http:/v2/', 'http:/v2/t/a/manifests/v1']);
  });

  it('retries the probe on 503 and stops at once on an abort during the backoff', async () => {
    const ctl = new AbortController();
    const f = scripted(() => {
      setImmediate(() => ctl.abort(new Error('run cancelled')));
      return new Response(null, { status: 503, headers: { 'retry-after': '30' } });
    });
    await expect(client(f.fetch, { signal: ctl.signal }).getManifest('t/a', 'v1')).rejects.toThrow('run cancelled');
    expect(f.calls).toHaveLength(1);
  });

  it('gets a bearer token (retrying the token server), and a fresh one once on a 401', async () => {
    let tokens = 0;
    const f = scripted((c) => {
      if (c.url.host === 'auth.example') {
        if (f.count(/token/) === 1) return new Response('busy', { status: 429, headers: { 'retry-after': '0' } });
        tokens++;
        return Response.json({ token: `tok${tokens}`, expires_in: 300 });
      }
      const challenge = { 'www-authenticate': 'Bearer realm="https://auth.example/token",service="reg"' };
      if (c.url.pathname === '/v2/') return new Response(null, { status: 401, headers: challenge });
      // the first token is "expired" for the manifest
      if (c.headers['Authorization'] !== 'Bearer tok2') return new Response(null, { status: 401, headers: challenge });
      return manifestOk();
    });
    await client(f.fetch, { credentials: { username: 'u', password: 'p' } }).getManifest('t/a', 'v1');
    const tokenCalls = f.calls.filter((c) => c.url.host === 'auth.example');
    expect(tokenCalls).toHaveLength(3);
    expect(tokenCalls[0]!.url.searchParams.getAll('scope')).toEqual(['repository:t/a:pull']);
    expect(tokenCalls[0]!.url.searchParams.get('account')).toBe('u');
    expect(f.calls.filter((c) => c.url.pathname.includes('manifests')).map((c) => c.headers['Authorization'])).toEqual(['Bearer tok1', 'Bearer tok2']);
  });

  it('names the token server when it stays unreachable', async () => {
    const f = scripted((c) => {
      if (c.url.host === 'auth.example') return netError('ENOTFOUND');
      return new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer realm="https://auth.example/token"' } });
    });
    await expect(client(f.fetch).getManifest('t/a', 'v1')).rejects.toThrow(
      `registry ${REG}: token server https://auth.example: read ENOTFOUND (after 3 attempts)`,
    );
  });
});

/** A response whose body sends `data` and then fails (a dropped connection). */
function dropping(data: Buffer, status = 200, headers: Record<string, string> = {}): Response {
  let sent = false;
  const body = new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (!sent) {
        sent = true;
        ctl.enqueue(new Uint8Array(data));
      } else ctl.error(new Error('other side closed'));
    },
  });
  return new Response(body, { status, headers });
}

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('blob downloads (injected fetch)', () => {
  const blob = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
  const digest = sha(blob);

  it('resumes a dropped download with a Range request from the bytes received', async () => {
    const f = scripted((c) => {
      if (c.url.pathname === '/v2/') return new Response(null, { status: 200 });
      const range = c.headers['Range'];
      if (!range) return dropping(blob.subarray(0, 3000));
      const from = Number(/^bytes=(\d+)-$/.exec(range)![1]);
      if (from === 3000) return dropping(blob.subarray(3000, 7000), 206);
      return new Response(blob.subarray(from), { status: 206 });
    });
    const got = await readAll(client(f.fetch).openBlob('t/a', digest, blob.length));
    expect(got.equals(blob)).toBe(true);
    expect(f.calls.filter((c) => c.url.pathname.includes('/blobs/')).map((c) => c.headers['Range'])).toEqual([undefined, 'bytes=3000-', 'bytes=7000-']);
  });

  it('skips what it already has when the registry ignores Range', async () => {
    const f = scripted((c) => {
      if (c.url.pathname === '/v2/') return new Response(null, { status: 200 });
      return c.headers['Range'] ? new Response(blob, { status: 200 }) : dropping(blob.subarray(0, 4096));
    });
    expect((await readAll(client(f.fetch).openBlob('t/a', digest, blob.length))).equals(blob)).toBe(true);
  });

  it('gives up after the last attempt, saying where the download stopped', async () => {
    const f = scripted((c) => (c.url.pathname === '/v2/' ? new Response(null, { status: 200 }) : dropping(Buffer.alloc(0))));
    await expect(readAll(client(f.fetch).openBlob('t/a', digest, blob.length))).rejects.toThrow(
      `${REG}/t/a: blob ${digest}: download interrupted at byte 0 of 10000: other side closed (after 3 attempts)`,
    );
  });
});

describe('blob uploads (injected fetch)', () => {
  it('cancels a failed upload session and starts a new one', async () => {
    const data = Buffer.from('hello world');
    const digest = sha(data);
    const f = scripted((c) => {
      const p = c.url.pathname;
      if (p === '/v2/') return new Response(null, { status: 200 });
      if (c.method === 'HEAD') return new Response(null, { status: 404 });
      if (c.method === 'POST') return new Response(null, { status: 202, headers: { location: `/v2/t/a/blobs/uploads/s${f.count(/^POST/)}` } });
      if (c.method === 'DELETE') return new Response(null, { status: 204 });
      if (c.method === 'PUT') return p.endsWith('/s1') ? netError() : new Response(null, { status: 201 });
      return new Response(null, { status: 400 });
    });
    expect(await client(f.fetch, { retries: 1 }).pushBlob('t/a', { digest, size: data.length }, data)).toBe('uploaded');
    expect(f.calls.filter((c) => c.url.pathname !== '/v2/').map((c) => `${c.method} ${c.url.pathname}`)).toEqual([
      `HEAD /v2/t/a/blobs/${digest}`,
      'POST /v2/t/a/blobs/uploads/',
      'PUT /v2/t/a/blobs/uploads/s1',
      'PUT /v2/t/a/blobs/uploads/s1',
      'DELETE /v2/t/a/blobs/uploads/s1',
      'POST /v2/t/a/blobs/uploads/',
      'PUT /v2/t/a/blobs/uploads/s2',
    ]);
    expect(f.calls.find((c) => c.method === 'PUT')!.url.searchParams.get('digest')).toBe(digest);
  });

  it('resumes a chunked upload from where the registry got to', async () => {
    const data = Buffer.from('abcdefghijklmnopqrstuvwxyz');
    const digest = sha(data);
    const f = scripted((c) => {
      if (c.url.pathname === '/v2/') return new Response(null, { status: 200 });
      if (c.method === 'HEAD') return new Response(null, { status: 404 });
      if (c.method === 'POST') return new Response(null, { status: 202, headers: { location: '/v2/t/a/blobs/uploads/s' } });
      if (c.method === 'PATCH') {
        // the second chunk (10-19) fails once after the registry stored 5 of its bytes
        if (c.headers['Content-Range'] === '10-19' && f.count(/^PATCH/) === 2) return new Response('oops', { status: 416 });
        return new Response(null, { status: 202, headers: { location: '/v2/t/a/blobs/uploads/s' } });
      }
      if (c.method === 'GET') return new Response(null, { status: 204, headers: { range: '0-14' } });
      if (c.method === 'PUT') return new Response(null, { status: 201 });
      return new Response(null, { status: 400 });
    });
    const c = client(f.fetch, { monolithicLimit: 5, chunkSize: 10 });
    expect(await c.pushBlob('t/a', { digest, size: data.length }, () => Readable.from([data]))).toBe('uploaded');
    expect(f.calls.filter((x) => x.method === 'PATCH').map((x) => x.headers['Content-Range'])).toEqual(['0-9', '10-19', '15-19', '20-25']);
  });
});

describe('retry policy', () => {
  it('honours Retry-After in seconds and as an HTTP date, caps it, and backs off exponentially otherwise', () => {
    expect(retryDelay(0, '3', 100)).toBe(3000);
    expect(retryDelay(0, '9999', 100)).toBe(60_000);
    expect(retryDelay(5, '0', 100)).toBe(0);
    const d = retryDelay(3, null, 100);
    expect(d).toBeGreaterThanOrEqual(600);
    expect(d).toBeLessThanOrEqual(1000);
    expect(retryDelay(2, 'not a date', 100)).toBeGreaterThanOrEqual(300);
    expect([...RETRY_STATUS].sort()).toEqual([408, 429, 500, 502, 503, 504]);
  });

  it('withRetries retries only RetryLater, and a Retrier refuses once the attempts are used', async () => {
    let n = 0;
    const r = await withRetries({ retries: 3, backoffMs: 1 }, 'thing', async () => {
      n++;
      if (n < 3) throw new RetryLater('not yet');
      return 'done';
    });
    expect([r, n]).toEqual(['done', 3]);
    await expect(withRetries({ retries: 3, backoffMs: 1 }, 'thing', async () => Promise.reject(new Error('fatal')))).rejects.toThrow('fatal');
    const t = new Retrier({ retries: 1, backoffMs: 1 }, 'op http://x/y');
    expect(t.last).toBe(false);
    await t.again(new Error('first'));
    expect(t.last).toBe(true);
    await expect(t.again(new Error('second'))).rejects.toThrow('op http://x/y: second (after 2 attempts)');
  });
});
