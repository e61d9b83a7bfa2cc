/**
 * The session half of the registry client: the client's options, the probe
 * of the registry's base URL (https, or plain http for loopback / --insecure
 * registries), its auth challenge, credentials and the bearer tokens cached
 * per scope set (refreshed once on a 401), fetch with a header timeout and
 * the run's abort signal, and `request`, one HTTP exchange with auth,
 * retries and backoff. RegistryClient (client.ts) builds its manifest, blob
 * and tag operations on it.
 */
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Host } from '../../core/host/host.js';
import { RegistryError } from '../errors.js';
import { apiHost, canonicalRegistry } from '../reference.js';
import { type Challenge, type Credentials, lookupCredentials, parseChallenges } from './auth.js';
import { drain, errorDetail, isLoopbackHost, urlForMessage, USER_AGENT } from './http.js';
import { describeCause, RETRY_STATUS, RetryLater, type RetryPolicy, withRetries } from './retry.js';

/** The `fetch` the client calls (the global one by default; tests pass a scripted one). */
export type FetchFn = (url: string, init: RequestInit) => Promise<Response>;

/**
 * Explicit credentials (`null` = anonymous), or none: then they are looked up
 * in the Docker/containers auth files, whose credential helpers run on `host`.
 */
type CredentialSource = { credentials: Credentials | null; host?: Host | undefined } | { credentials?: undefined; host: Host };

type RegistryClientOptions = CredentialSource & {
  /** Registry name as in references (`docker.io`, `host:5000`). */
  registry: string;
  /** Allow plain HTTP (always allowed for loopback hosts). */
  insecure?: boolean | undefined;
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
  /** HTTP client (default: the global `fetch`). */
  fetch?: FetchFn | undefined;
};

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

export class RegistrySession {
  readonly registry: string;
  readonly host: string;
  private base: Promise<string> | undefined;
  private challenge: Challenge | null = null;
  private creds: Promise<Credentials | null>;
  private readonly tokens = new Map<string, Promise<Token | null>>();
  protected readonly log: Logger | undefined;
  private readonly headerTimeoutMs: number;
  private readonly signal: AbortSignal | undefined;
  private readonly fetchFn: FetchFn;
  /** The retry policy of every loop of this client (and of push.ts). */
  readonly retry: RetryPolicy;
  readonly monolithicLimit: number;
  readonly chunkSize: number;

  constructor(private readonly opts: RegistryClientOptions) {
    this.registry = canonicalRegistry(opts.registry);
    this.host = apiHost(this.registry);
    this.creds = opts.credentials !== undefined ? Promise.resolve(opts.credentials) : lookupCredentials(this.registry, opts.host);
    this.log = opts.log;
    this.headerTimeoutMs = opts.headerTimeoutMs ?? 60_000;
    this.signal = opts.signal;
    this.fetchFn = opts.fetch ?? ((url, init) => fetch(url, init));
    this.retry = { retries: opts.retries ?? 4, backoffMs: opts.backoffMs ?? 500, signal: opts.signal, log: opts.log };
    this.monolithicLimit = opts.monolithicLimit ?? 32 << 20;
    this.chunkSize = opts.chunkSize ?? 16 << 20;
  }

  /** `https://host` or, for loopback / --insecure registries that do not speak TLS, `http://host`. */
  baseUrl(): Promise<string> {
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
    let attempts = 0;
    for (const scheme of schemes) {
      const url = `${scheme}://${this.host}/v2/`;
      // a TLS handshake against a plain-HTTP server fails at once: then try the next scheme without waiting
      const fallback = scheme === 'https' && allowHttp;
      try {
        await withRetries(
          this.retry,
          `registry ${this.registry}: GET ${url}`,
          async (r) => {
            let res: Response;
            try {
              res = await this.fetchWithTimeout(url, { method: 'GET', headers: { 'User-Agent': USER_AGENT } });
            } catch (e) {
              attempts++;
              // not a RetryLater: no retry on this scheme
              throw fallback ? e : new RetryLater(e);
            }
            attempts++;
            await drain(res);
            if (res.status === 401) this.challenge = this.pickChallenge(res.headers.get('www-authenticate'));
            else if (RETRY_STATUS.has(res.status) && !r.last) throw RetryLater.status(res);
            else if (res.status >= 400 && res.status !== 404) throw RegistryError.fromStatus(res.status, `registry ${this.registry}: GET /v2/`, '');
          },
          (cause) => cause,
        );
        this.log?.debug({ registry: this.registry, scheme }, 'registry reachable');
        return `${scheme}://${this.host}`;
      } catch (e) {
        if (this.signal?.aborted || e instanceof RegistryError) throw e;
        lastErr = e;
      }
    }
    const hint = allowHttp ? '' : ' (for a plain-HTTP registry use --insecure)';
    throw new RegistryError(
      'unavailable',
      `registry ${this.registry}: cannot connect to ${this.host}: ${describeCause(lastErr)} (after ${attempts} attempt${attempts === 1 ? '' : 's'})${hint}`,
      undefined,
      { cause: lastErr },
    );
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
      return await this.fetchFn(url, {
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
      if (!creds || creds.identityToken)
        throw new RegistryError('failed-precondition', `registry ${this.registry}: requires a username and password (use --creds or docker login)`, 401);
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
    const what = `registry ${this.registry}: token server ${url.origin}`;
    const res = await withRetries(this.retry, what, async (r) => {
      let res: Response;
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
        throw new RetryLater(e);
      }
      if (RETRY_STATUS.has(res.status) && !r.last) {
        await drain(res);
        throw RetryLater.status(res);
      }
      return res;
    });
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

  /**
   * One HTTP exchange with auth, retries and backoff. The caller checks the
   * status; a retryable status is returned as is once no attempt is left.
   * A 401 gets a fresh token (and the scopes the challenge asks for) once,
   * at once. Internal to the registry client (push.ts uses it).
   */
  async request(method: string, pathOrUrl: string, o: RequestOptions): Promise<Response> {
    const base = await this.baseUrl();
    const url = o.absolute ? pathOrUrl : `${base}${pathOrUrl}`;
    let scopes = o.scopes;
    let refreshed = false;
    let force = false;
    return withRetries(this.retry, `${o.what}: ${method} ${urlForMessage(url)}`, async (r) => {
      for (;;) {
        const headers: Record<string, string> = { 'User-Agent': USER_AGENT, ...o.headers };
        const auth = await this.authorization(scopes, force);
        force = false;
        if (auth) headers['Authorization'] = auth;
        let res: Response;
        try {
          const body = o.body?.();
          res = await this.fetchWithTimeout(url, { method, headers, body: body as RequestInit['body'], redirect: 'follow' });
        } catch (e) {
          throw new RetryLater(e);
        }
        if (res.status === 401 && !refreshed) {
          // a token expired or the challenge asks for another scope: get a new token once
          const ch = this.pickChallenge(res.headers.get('www-authenticate'));
          await drain(res);
          if (ch) {
            this.challenge = ch;
            const extra = ch.params['scope'];
            if (extra) scopes = [...new Set([...scopes, ...extra.split(' ')])];
          }
          refreshed = true;
          force = true;
          continue;
        }
        if (RETRY_STATUS.has(res.status) && !r.last) {
          await drain(res);
          throw RetryLater.status(res);
        }
        return res;
      }
    });
  }

  /** Throw the RegistryError for a failed response (naming `what`, the status and the registry's reason). */
  async fail(res: Response, what: string): Promise<never> {
    throw RegistryError.fromStatus(res.status, what, await errorDetail(res));
  }
}
