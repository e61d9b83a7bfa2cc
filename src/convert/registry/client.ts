/**
 * An OCI distribution (registry API v2) client on Node's global fetch:
 * manifests and indexes, streamed blobs (resumed with Range requests after a
 * dropped connection), paginated tag lists, anonymous / basic / bearer-token
 * auth, plain HTTP for loopback or `--insecure` registries, retries with
 * backoff that honour 429 + Retry-After, and resumable-safe pushes (HEAD
 * first, cross-repository mounts, monolithic or chunked uploads; manifests
 * are pushed by the caller after every blob).
 */
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { sha256Digest } from '../../core/digest.js';
import { BadContentError, RegistryError } from '../errors.js';
import { MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, type RawManifest } from '../image/types.js';
import { apiHost, canonicalRegistry } from '../reference.js';
import { sleep } from '../util.js';
import { type Challenge, type Credentials, lookupCredentials, parseChallenges } from './auth.js';

export interface RegistryClientOptions {
  /** Registry name as in references (`docker.io`, `host:5000`). */
  registry: string;
  /** Allow plain HTTP (always allowed for loopback hosts). */
  insecure?: boolean | undefined;
  /** Explicit credentials; `undefined` = look them up in the Docker/containers auth files; `null` = anonymous. */
  credentials?: Credentials | null | undefined;
  log?: Logger | undefined;
  /** Attempts after the first for retryable failures (default 4). */
  retries?: number | undefined;
  /** Base delay of the exponential backoff (default 500 ms; tests use less). */
  backoffMs?: number | undefined;
  /** Time to wait for response headers (default 60 s). */
  headerTimeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Blob size at or below which uploads are monolithic (default 32 MiB). */
  monolithicLimit?: number | undefined;
  /** Chunk size of chunked uploads (default 16 MiB). */
  chunkSize?: number | undefined;
}

interface RequestOptions {
  scopes: string[];
  headers?: Record<string, string>;
  /** A fresh body for each attempt. */
  body?: () => Buffer | Readable | undefined;
  what: string;
  /** Absolute URL instead of a path under the registry base. */
  absolute?: boolean;
}

interface Token {
  header: string;
  expires: number;
}

const USER_AGENT = 'cvmfs-thin (+https://github.com/cvmfs-thin)';
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

export function isLoopbackHost(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Delay before a retry: Retry-After (seconds or HTTP date) if given, else exponential with ±25 % jitter; capped at 60 s. */
export function retryDelay(attempt: number, retryAfter: string | null, baseMs: number): number {
  if (retryAfter) {
    const secs = Number(retryAfter);
    if (Number.isFinite(secs) && secs >= 0) return Math.min(secs * 1000, 60_000);
    const t = Date.parse(retryAfter);
    if (!Number.isNaN(t)) return Math.min(Math.max(0, t - Date.now()), 60_000);
  }
  const d = Math.min(baseMs * 2 ** attempt, 60_000);
  return Math.round(d * (0.75 + Math.random() * 0.5));
}

async function errorDetail(res: Response): Promise<string> {
  try {
    const text = (await res.text()).slice(0, 2000);
    try {
      const o = JSON.parse(text) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
      if (Array.isArray(o.errors) && o.errors.length) {
        return o.errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
      }
    } catch {
      /* not JSON */
    }
    return text.trim().split('\n')[0]!.slice(0, 300);
  } catch {
    return '';
  }
}

async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const len = Number(res.headers.get('content-length'));
  if (Number.isFinite(len) && len > limit) throw new BadContentError(`${what}: ${len} bytes is larger than the ${limit}-byte limit`);
  const chunks: Buffer[] = [];
  let total = 0;
  if (!res.body) return Buffer.alloc(0);
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
    total += c.byteLength;
    if (total > limit) throw new BadContentError(`${what}: larger than the ${limit}-byte limit`);
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}

export function pullScope(repo: string): string {
  return `repository:${repo}:pull`;
}
export function pushScope(repo: string): string {
  return `repository:${repo}:pull,push`;
}

export class RegistryClient {
  readonly registry: string;
  readonly host: string;
  private base: Promise<string> | undefined;
  private challenge: Challenge | null = null;
  private creds: Promise<Credentials | null>;
  private readonly tokens = new Map<string, Promise<Token | null>>();
  private readonly log: Logger | undefined;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly headerTimeoutMs: number;
  private readonly signal: AbortSignal | undefined;
  readonly monolithicLimit: number;
  readonly chunkSize: number;

  constructor(private readonly opts: RegistryClientOptions) {
    this.registry = canonicalRegistry(opts.registry);
    this.host = apiHost(this.registry);
    this.creds = opts.credentials !== undefined ? Promise.resolve(opts.credentials) : lookupCredentials(this.registry);
    this.log = opts.log;
    this.retries = opts.retries ?? 4;
    this.backoffMs = opts.backoffMs ?? 500;
    this.headerTimeoutMs = opts.headerTimeoutMs ?? 60_000;
    this.signal = opts.signal;
    this.monolithicLimit = opts.monolithicLimit ?? 32 << 20;
    this.chunkSize = opts.chunkSize ?? 16 << 20;
  }

  /** `https://host` or, for loopback / --insecure registries that do not speak TLS, `http://host`. */
  private baseUrl(): Promise<string> {
    // a failed probe is not cached: the next request probes again
    this.base ??= this.ping().catch((e: unknown) => {
      this.base = undefined;
      throw e;
    });
    return this.base;
  }

  private async ping(): Promise<string> {
    const allowHttp = this.opts.insecure === true || isLoopbackHost(this.host);
    const schemes = allowHttp ? ['https', 'http'] : ['https'];
    let lastErr: unknown;
    for (const scheme of schemes) {
      const url = `${scheme}://${this.host}/v2/`;
      for (let attempt = 0; ; attempt++) {
        try {
          const res = await this.fetchWithTimeout(url, { method: 'GET', headers: { 'User-Agent': USER_AGENT } });
          await res.arrayBuffer().catch(() => undefined);
          if (res.status === 401) {
            this.challenge = this.pickChallenge(res.headers.get('www-authenticate'));
          } else if (RETRY_STATUS.has(res.status) && attempt < this.retries) {
            await sleep(retryDelay(attempt, res.headers.get('retry-after'), this.backoffMs), this.signal);
            continue;
          } else if (res.status >= 400 && res.status !== 404) {
            throw RegistryError.fromStatus(res.status, `registry ${this.registry}: GET /v2/`, '');
          }
          this.log?.debug({ registry: this.registry, scheme }, 'registry reachable');
          return `${scheme}://${this.host}`;
        } catch (e) {
          if (this.signal?.aborted) throw e;
          if (e instanceof RegistryError) throw e;
          lastErr = e;
          // a TLS handshake against a plain-HTTP server fails at once: try the next scheme
          if (scheme === 'https' && allowHttp) break;
          if (attempt < this.retries) {
            await sleep(retryDelay(attempt, null, this.backoffMs), this.signal);
            continue;
          }
          break;
        }
      }
    }
    const cause = lastErr instanceof Error ? ((lastErr.cause as Error | undefined)?.message ?? lastErr.message) : String(lastErr);
    const hint = allowHttp ? '' : ' (for a plain-HTTP registry use --insecure)';
    throw new RegistryError('unavailable', `registry ${this.registry}: cannot connect to ${this.host}: ${cause}${hint}`, undefined, { cause: lastErr });
  }

  private pickChallenge(header: string | null): Challenge | null {
    if (!header) return null;
    const cs = parseChallenges(header);
    return cs.find((c) => c.scheme === 'bearer') ?? cs.find((c) => c.scheme === 'basic') ?? null;
  }

  /** fetch with a time limit on the response headers (not on the body) and the run's abort signal. */
  private async fetchWithTimeout(url: string, init: RequestInit): Promise<Response> {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(new Error(`no response within ${this.headerTimeoutMs} ms`)), this.headerTimeoutMs);
    try {
      const body = init.body;
      return await fetch(url, {
        ...init,
        signal: this.signal ? AbortSignal.any([ctl.signal, this.signal]) : ctl.signal,
        ...(body instanceof Readable ? { duplex: 'half' } : {}),
      } as RequestInit);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The Authorization header for a set of scopes (null: none needed). */
  private async authorization(scopes: string[], force = false): Promise<string | null> {
    const ch = this.challenge;
    if (!ch) return null;
    const creds = await this.creds;
    if (ch.scheme === 'basic') {
      if (!creds || creds.identityToken) throw new RegistryError('failed-precondition', `registry ${this.registry}: requires a username and password (use --creds or docker login)`, 401);
      return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
    }
    const key = [...new Set(scopes)].sort().join(' ');
    let p = this.tokens.get(key);
    if (p && !force) {
      const t = await p.catch(() => null);
      if (t && t.expires > Date.now()) return t.header;
    }
    p = this.fetchToken(ch, [...new Set(scopes)], creds);
    this.tokens.set(key, p);
    p.catch(() => this.tokens.delete(key));
    const t = await p;
    return t ? t.header : null;
  }

  private async fetchToken(ch: Challenge, scopes: string[], creds: Credentials | null): Promise<Token> {
    const realm = ch.params['realm'];
    if (!realm) throw new RegistryError('unavailable', `registry ${this.registry}: bearer challenge without realm`);
    const url = new URL(realm);
    const service = ch.params['service'];
    let res: Response;
    for (let attempt = 0; ; attempt++) {
      try {
        if (creds?.identityToken) {
          const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'cvmfs-thin' });
          if (service) form.set('service', service);
          if (scopes.length) form.set('scope', scopes.join(' '));
          res = await this.fetchWithTimeout(url.toString(), {
            method: 'POST',
            headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'User-Agent': USER_AGENT },
            body: form.toString(),
          });
        } else {
          const u = new URL(url);
          if (service) u.searchParams.set('service', service);
          for (const s of scopes) u.searchParams.append('scope', s);
          if (creds) u.searchParams.set('account', creds.username);
          const headers: Record<string, string> = { 'User-Agent': USER_AGENT };
          if (creds) headers['Authorization'] = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
          res = await this.fetchWithTimeout(u.toString(), { method: 'GET', headers });
        }
      } catch (e) {
        if (this.signal?.aborted || attempt >= this.retries) {
          throw new RegistryError('unavailable', `registry ${this.registry}: token server ${url.origin}: ${(e as Error).message}`, undefined, { cause: e });
        }
        await sleep(retryDelay(attempt, null, this.backoffMs), this.signal);
        continue;
      }
      if (RETRY_STATUS.has(res.status) && attempt < this.retries) {
        await res.arrayBuffer().catch(() => undefined);
        await sleep(retryDelay(attempt, res.headers.get('retry-after'), this.backoffMs), this.signal);
        continue;
      }
      break;
    }
    if (!res.ok) {
      throw RegistryError.fromStatus(res.status, `registry ${this.registry}: token for ${scopes.join(' ') || '(no scope)'}`, await errorDetail(res));
    }
    const body = (await res.json().catch(() => null)) as { token?: string; access_token?: string; expires_in?: number; issued_at?: string } | null;
    const tok = body?.token ?? body?.access_token;
    if (!tok) throw new RegistryError('unavailable', `registry ${this.registry}: token server answered without a token`);
    const ttl = typeof body?.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    this.log?.debug({ registry: this.registry, scopes, ttl }, 'got registry token');
    return { header: `Bearer ${tok}`, expires: Date.now() + ttl * 800 };
  }

  /** One HTTP exchange with auth, retries and backoff. The caller checks the status. */
  private async request(method: string, pathOrUrl: string, o: RequestOptions): Promise<Response> {
    const base = await this.baseUrl();
    const url = o.absolute ? pathOrUrl : `${base}${pathOrUrl}`;
    let scopes = o.scopes;
    let refreshed = false;
    let force = false;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { 'User-Agent': USER_AGENT, ...o.headers };
      const auth = await this.authorization(scopes, force);
      force = false;
      if (auth) headers['Authorization'] = auth;
      let res: Response;
      try {
        const body = o.body?.();
        res = await this.fetchWithTimeout(url, { method, headers, body: body as RequestInit['body'], redirect: 'follow' });
      } catch (e) {
        if (this.signal?.aborted) throw this.signal.reason ?? e;
        if (attempt >= this.retries) {
          const cause = (e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : (e as Error).message;
          throw new RegistryError('unavailable', `${o.what}: ${cause} (after ${attempt + 1} attempts)`, undefined, { cause: e });
        }
        this.log?.debug({ what: o.what, err: (e as Error).message, attempt }, 'request failed; retrying');
        await sleep(retryDelay(attempt, null, this.backoffMs), this.signal);
        continue;
      }
      if (res.status === 401 && !refreshed) {
        // a token expired or the challenge asks for another scope: get a new token once
        const ch = this.pickChallenge(res.headers.get('www-authenticate'));
        await res.arrayBuffer().catch(() => undefined);
        if (ch) {
          this.challenge = ch;
          const extra = ch.params['scope'];
          if (extra) scopes = [...new Set([...scopes, ...extra.split(' ')])];
        }
        refreshed = true;
        force = true;
        continue;
      }
      if (RETRY_STATUS.has(res.status) && attempt < this.retries) {
        const delay = retryDelay(attempt, res.headers.get('retry-after'), this.backoffMs);
        this.log?.info({ what: o.what, status: res.status, delayMs: delay, attempt }, 'registry asked to retry; backing off');
        await res.arrayBuffer().catch(() => undefined);
        await sleep(delay, this.signal);
        continue;
      }
      return res;
    }
  }

  private async fail(res: Response, what: string): Promise<never> {
    throw RegistryError.fromStatus(res.status, what, await errorDetail(res));
  }

  /** GET a manifest or index by tag or digest; verifies the digest when `ref` is one. */
  async getManifest(repo: string, ref: string, accept = MANIFEST_ACCEPT): Promise<RawManifest> {
    const what = `${this.registry}/${repo}: manifest ${ref}`;
    const res = await this.request('GET', `/v2/${repo}/manifests/${ref}`, { scopes: [pullScope(repo)], headers: { Accept: accept }, what });
    if (!res.ok) await this.fail(res, what);
    const bytes = await readLimited(res, MAX_MANIFEST_BYTES, what);
    const digest = sha256Digest(bytes);
    if (ref.startsWith('sha256:') && digest !== ref) throw new BadContentError(`${what}: content has digest ${digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    const header = res.headers.get('docker-content-digest');
    if (header && header.startsWith('sha256:') && header !== digest) {
      throw new BadContentError(`${what}: registry says ${header} but the content has digest ${digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    }
    return { bytes, mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(), digest };
  }

  /** The digest a tag points at (HEAD), or null if it does not exist. */
  async headManifest(repo: string, ref: string): Promise<{ digest: string | null; mediaType: string } | null> {
    const what = `${this.registry}/${repo}: manifest ${ref}`;
    const res = await this.request('HEAD', `/v2/${repo}/manifests/${ref}`, { scopes: [pullScope(repo)], headers: { Accept: MANIFEST_ACCEPT }, what });
    if (res.status === 404) return null;
    if (!res.ok) await this.fail(res, what);
    return { digest: res.headers.get('docker-content-digest'), mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim() };
  }

  /** Small blobs (configs) in memory, verified. */
  async getBlobBytes(repo: string, digest: string, limit: number): Promise<Buffer> {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const res = await this.request('GET', `/v2/${repo}/blobs/${digest}`, { scopes: [pullScope(repo)], what });
    if (!res.ok) await this.fail(res, what);
    const bytes = await readLimited(res, limit, what);
    const got = sha256Digest(bytes);
    if (got !== digest) throw new BadContentError(`${what}: content has digest ${got}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    return bytes;
  }

  /**
   * Stream a blob. A connection that drops mid-way is resumed with a Range
   * request from the current offset (or by skipping, if the registry ignores
   * Range). The caller verifies size and digest (see verify.ts).
   */
  openBlob(repo: string, digest: string, size: number): Readable {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const self = this;
    async function* gen(): AsyncGenerator<Buffer> {
      let offset = 0;
      for (let attempt = 0; ; attempt++) {
        const headers: Record<string, string> = offset > 0 ? { Range: `bytes=${offset}-` } : {};
        const res = await self.request('GET', `/v2/${repo}/blobs/${digest}`, { scopes: [pullScope(repo)], headers, what });
        if (!res.ok) await self.fail(res, what);
        let skip = offset > 0 && res.status !== 206 ? offset : 0;
        try {
          for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
            let b = Buffer.from(c.buffer, c.byteOffset, c.byteLength);
            if (skip > 0) {
              if (b.length <= skip) {
                skip -= b.length;
                continue;
              }
              b = b.subarray(skip);
              skip = 0;
            }
            offset += b.length;
            yield b;
          }
          return;
        } catch (e) {
          if (self.signal?.aborted || attempt >= self.retries || offset > size) throw e;
          self.log?.info({ what, offset, err: (e as Error).message }, 'blob download interrupted; resuming');
          await sleep(retryDelay(attempt, null, self.backoffMs), self.signal);
        }
      }
    }
    return Readable.from(gen(), { objectMode: false, highWaterMark: 1 << 20 });
  }

  async blobExists(repo: string, digest: string): Promise<boolean> {
    const what = `${this.registry}/${repo}: blob ${digest}`;
    const res = await this.request('HEAD', `/v2/${repo}/blobs/${digest}`, { scopes: [pushScope(repo)], what });
    if (res.status === 404) return false;
    if (res.ok) return true;
    return this.fail(res, what);
  }

  private resolveLocation(res: Response, base: string, what: string): string {
    const loc = res.headers.get('location');
    if (!loc) throw new RegistryError('unavailable', `${what}: registry gave no upload Location`);
    return new URL(loc, base).toString();
  }

  /**
   * Push a blob unless the registry has it. Tries a cross-repository mount
   * from each of `mountFrom` first. `data` is the content (small blobs) or a
   * function opening it (large ones; called again for each retry).
   */
  async pushBlob(
    repo: string,
    desc: { digest: string; size: number },
    data: Buffer | (() => Readable),
    mountFrom: readonly string[] = [],
  ): Promise<'exists' | 'mounted' | 'uploaded'> {
    const what = `${this.registry}/${repo}: push blob ${desc.digest}`;
    if (await this.blobExists(repo, desc.digest)) return 'exists';
    const base = await this.baseUrl();
    let location: string | undefined;
    for (const from of mountFrom) {
      if (from === repo) continue;
      const res = await this.request('POST', `/v2/${repo}/blobs/uploads/?mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(from)}`, {
        scopes: [pushScope(repo), pullScope(from)],
        headers: { 'Content-Length': '0' },
        what,
      });
      await res.arrayBuffer().catch(() => undefined);
      if (res.status === 201) return 'mounted';
      if (res.status === 202) {
        location = this.resolveLocation(res, base, what);
        break;
      }
    }
    for (let attempt = 0; ; attempt++) {
      if (!location) {
        const res = await this.request('POST', `/v2/${repo}/blobs/uploads/`, { scopes: [pushScope(repo)], headers: { 'Content-Length': '0' }, what });
        if (res.status !== 202) await this.fail(res, what);
        await res.arrayBuffer().catch(() => undefined);
        location = this.resolveLocation(res, base, what);
      }
      try {
        if (Buffer.isBuffer(data) && data.length <= this.monolithicLimit) await this.uploadMonolithic(repo, location, desc.digest, data, what);
        else await this.uploadChunked(repo, location, desc, data, what);
        return 'uploaded';
      } catch (e) {
        // cancel the session (best effort) and start over with a new one
        const loc = location;
        location = undefined;
        await this.request('DELETE', loc, { scopes: [pushScope(repo)], what, absolute: true }).then(
          (r) => r.arrayBuffer(),
          () => undefined,
        );
        if (this.signal?.aborted || attempt >= this.retries || e instanceof BadContentError || (e instanceof RegistryError && e.kind !== 'unavailable')) throw e;
        this.log?.info({ what, err: (e as Error).message, attempt }, 'blob upload failed; restarting it');
        await sleep(retryDelay(attempt, null, this.backoffMs), this.signal);
      }
    }
  }

  private withDigest(location: string, digest: string): string {
    const u = new URL(location);
    u.searchParams.set('digest', digest);
    return u.toString();
  }

  private async uploadMonolithic(repo: string, location: string, digest: string, data: Buffer, what: string): Promise<void> {
    const res = await this.request('PUT', this.withDigest(location, digest), {
      scopes: [pushScope(repo)],
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(data.length) },
      body: () => data,
      what,
      absolute: true,
    });
    if (res.status !== 201 && res.status !== 204) await this.fail(res, what);
    await res.arrayBuffer().catch(() => undefined);
  }

  /** PATCH chunks with Content-Range; after a failed chunk ask the registry where it is and resume from there. */
  private async uploadChunked(repo: string, location: string, desc: { digest: string; size: number }, data: Buffer | (() => Readable), what: string): Promise<void> {
    const source = Buffer.isBuffer(data) ? Readable.from([data]) : data();
    let loc = location;
    let offset = 0;
    let pending: Buffer = Buffer.alloc(0);
    const flush = async (chunk: Buffer) => {
      let start = offset;
      let body = chunk;
      for (let attempt = 0; ; attempt++) {
        const res = await this.request('PATCH', loc, {
          scopes: [pushScope(repo)],
          headers: {
            'Content-Type': 'application/octet-stream',
            'Content-Length': String(body.length),
            'Content-Range': `${start}-${start + body.length - 1}`,
          },
          body: () => body,
          what,
          absolute: true,
        });
        await res.arrayBuffer().catch(() => undefined);
        if (res.status === 202) {
          loc = new URL(res.headers.get('location') ?? loc, loc).toString();
          offset = start + body.length;
          return;
        }
        if (attempt >= this.retries || res.status === 404 || res.status === 401 || res.status === 403) await this.fail(res, what);
        // where did the registry get to?
        const st = await this.request('GET', loc, { scopes: [pushScope(repo)], what, absolute: true });
        await st.arrayBuffer().catch(() => undefined);
        const m = /^0-(\d+)$/.exec(st.headers.get('range') ?? '');
        const have = m ? Number(m[1]) + 1 : 0;
        if (st.status !== 204 || have < offset - 0 || have > start + body.length) await this.fail(res, what);
        body = body.subarray(have - start);
        start = have;
        if (body.length === 0) {
          offset = have;
          return;
        }
      }
    };
    for await (const c of source as AsyncIterable<Buffer>) {
      pending = pending.length ? Buffer.concat([pending, c]) : c;
      while (pending.length >= this.chunkSize) {
        await flush(pending.subarray(0, this.chunkSize));
        pending = pending.subarray(this.chunkSize);
      }
    }
    if (pending.length) await flush(pending);
    if (offset !== desc.size) throw new BadContentError(`${what}: uploaded ${offset} bytes, expected ${desc.size}`);
    const res = await this.request('PUT', this.withDigest(loc, desc.digest), {
      scopes: [pushScope(repo)],
      headers: { 'Content-Length': '0' },
      what,
      absolute: true,
    });
    if (res.status !== 201 && res.status !== 204) await this.fail(res, what);
    await res.arrayBuffer().catch(() => undefined);
  }

  /** PUT a manifest (after all its blobs). Returns the digest. */
  async putManifest(repo: string, ref: string, raw: RawManifest): Promise<string> {
    const what = `${this.registry}/${repo}: push manifest ${ref}`;
    const res = await this.request('PUT', `/v2/${repo}/manifests/${ref}`, {
      scopes: [pushScope(repo)],
      headers: { 'Content-Type': raw.mediaType },
      body: () => raw.bytes,
      what,
    });
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) await this.fail(res, what);
    await res.arrayBuffer().catch(() => undefined);
    const d = res.headers.get('docker-content-digest');
    if (d && d.startsWith('sha256:') && d !== raw.digest) throw new BadContentError(`${what}: registry stored it as ${d}, expected ${raw.digest}`, 'CVMFS_THIN_DIGEST_MISMATCH');
    return raw.digest;
  }

  /** All tags of a repository (follows `Link: <…>; rel="next"` pagination). */
  async listTags(repo: string, pageSize = 1000): Promise<string[]> {
    const what = `${this.registry}/${repo}: tags/list`;
    const tags: string[] = [];
    let next: string | null = `/v2/${repo}/tags/list?n=${pageSize}`;
    const base = await this.baseUrl();
    for (let page = 0; next && page < 10_000; page++) {
      const abs: boolean = /^https?:\/\//.test(next);
      const res: Response = await this.request('GET', next, { scopes: [pullScope(repo)], what, absolute: abs });
      if (!res.ok) await this.fail(res, what);
      const body = (await res.json().catch(() => null)) as { tags?: unknown } | null;
      if (!body || (body.tags !== null && body.tags !== undefined && !Array.isArray(body.tags))) throw new BadContentError(`${what}: answer is not {"tags": [...]}`);
      for (const t of (body.tags as unknown[] | null) ?? []) if (typeof t === 'string') tags.push(t);
      const link = res.headers.get('link');
      const m = link ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
      next = m ? (m[1]!.startsWith('/') ? m[1]! : new URL(m[1]!, base).toString()) : null;
    }
    return tags;
  }
}
