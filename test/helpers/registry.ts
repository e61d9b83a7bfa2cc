/**
 * A real OCI registry for tests: Debian's `docker-registry` (distribution
 * 2.8) on 127.0.0.1 at a free port with storage in a temp dir, optionally
 * behind bearer-token auth served by a small Node token server (ES256 JWTs
 * with an x5c chain from a self-signed cert made with openssl), and an
 * optional fault-injecting HTTP proxy (429 + Retry-After, dropped blob
 * downloads) in front of it.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface TokenAuth {
  /** username → password; these users may pull and push everything. */
  users: Record<string, string>;
  /** Anonymous clients may pull (default false: anonymous gets no access). */
  anonymousPull?: boolean;
}

export interface TestRegistry {
  /** `127.0.0.1:PORT` */
  host: string;
  dir: string;
  /** Requests seen by the token server (scopes asked for), if token auth is on. */
  tokenRequests: { account: string | null; scopes: string[] }[];
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

async function waitHttp(url: string, child: ChildProcess, log: () => string, timeoutMs = 15_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${log()}`);
    try {
      const r = await fetch(url);
      await r.arrayBuffer();
      if (r.status === 200 || r.status === 401) return;
    } catch {
      /* not up yet */
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`docker-registry did not answer on ${url}: ${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

function startTokenServer(
  dir: string,
  auth: TokenAuth,
  service: string,
  issuer: string,
  seen: TestRegistry['tokenRequests'],
): Promise<{ server: http.Server; realm: string; certFile: string }> {
  const keyFile = path.join(dir, 'token.key');
  const certFile = path.join(dir, 'token.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      '/CN=cvmfs-thin test token issuer',
    ],
    { stdio: 'ignore' },
  );
  const key = createPrivateKey(readFileSync(keyFile));
  const der = execFileSync('openssl', ['x509', '-in', certFile, '-outform', 'DER']);
  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    let account: string | null = null;
    const h = req.headers.authorization;
    if (h?.startsWith('Basic ')) {
      const dec = Buffer.from(h.slice(6), 'base64').toString();
      const i = dec.indexOf(':');
      const user = dec.slice(0, i);
      if (auth.users[user] === undefined || auth.users[user] !== dec.slice(i + 1)) {
        res.writeHead(401, { 'Content-Type': 'application/json' }).end(JSON.stringify({ details: 'bad credentials' }));
        return;
      }
      account = user;
    }
    const scopes = u.searchParams
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter(Boolean);
    seen.push({ account, scopes });
    const access = scopes
      .map((s) => {
        const [type, name, actions] = s.split(':') as [string, string, string];
        const want = (actions ?? '').split(',');
        const granted = account ? want : auth.anonymousPull ? want.filter((a) => a === 'pull') : [];
        return { type, name, actions: granted };
      })
      .filter((a) => a.actions.length > 0);
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'ES256', x5c: [der.toString('base64')] };
    const claims = { iss: issuer, sub: account ?? '', aud: service, exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    const token = `${input}.${b64url(sig)}`;
    res
      .writeHead(200, { 'Content-Type': 'application/json' })
      .end(JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() }));
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      resolve({ server, realm: `http://127.0.0.1:${port}/token`, certFile });
    });
  });
}

export async function startRegistry(opts: { tokenAuth?: TokenAuth } = {}): Promise<TestRegistry> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cvmfs-thin-registry-'));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const tokenRequests: TestRegistry['tokenRequests'] = [];
  let token: { server: http.Server; realm: string; certFile: string } | undefined;
  const lines = [
    'version: 0.1',
    'log: { level: warn, accesslog: { disabled: true } }',
    `storage: { filesystem: { rootdirectory: ${JSON.stringify(path.join(dir, 'data'))} }, delete: { enabled: true } }`,
    `http: { addr: ${JSON.stringify(host)}, secret: cvmfs-thin-test }`,
  ];
  if (opts.tokenAuth) {
    token = await startTokenServer(dir, opts.tokenAuth, 'cvmfs-thin-test-registry', 'cvmfs-thin-test-issuer', tokenRequests);
    lines.push(
      `auth: { token: { realm: ${JSON.stringify(token.realm)}, service: cvmfs-thin-test-registry, issuer: cvmfs-thin-test-issuer, rootcertbundle: ${JSON.stringify(token.certFile)} } }`,
    );
  }
  const cfg = path.join(dir, 'config.yml');
  writeFileSync(cfg, `${lines.join('\n')}\n`);
  const child = spawn('docker-registry', ['serve', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out = (out + c.toString()).slice(-4000)));
  child.stderr!.on('data', (c: Buffer) => (out = (out + c.toString()).slice(-4000)));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    if (token) await new Promise<void>((r) => token!.server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitHttp(`http://${host}/v2/`, child, () => out);
  } catch (e) {
    await stop();
    throw e;
  }
  return { host, dir, tokenRequests, stop };
}

export interface FaultRules {
  /** Answer this many requests whose path matches with 429 + Retry-After (seconds). */
  tooManyRequests?: { match: RegExp; count: number; retryAfter: string };
  /** Cut this many blob downloads matching after `afterBytes` bytes (the client must resume). */
  dropBlob?: { match: RegExp; count: number; afterBytes: number };
}

export interface FaultyProxy {
  host: string;
  /** Requests seen: method, path, status sent, Range header. */
  log: { method: string; path: string; status: number; range: string | undefined }[];
  stop(): Promise<void>;
}

/** An HTTP proxy in front of `target` (host:port) that injects the faults in `rules`. Location headers are rewritten to the proxy. */
export async function startFaultyProxy(target: string, rules: FaultRules): Promise<FaultyProxy> {
  const log: FaultyProxy['log'] = [];
  let tooMany = rules.tooManyRequests?.count ?? 0;
  let drops = rules.dropBlob?.count ?? 0;
  let self = '';
  const server = http.createServer((req, res) => {
    const p = req.url ?? '/';
    const range = req.headers.range;
    if (rules.tooManyRequests && tooMany > 0 && rules.tooManyRequests.match.test(p)) {
      tooMany--;
      log.push({ method: req.method ?? '', path: p, status: 429, range });
      req.resume();
      res
        .writeHead(429, { 'Retry-After': rules.tooManyRequests.retryAfter, 'Content-Type': 'application/json' })
        .end('{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}');
      return;
    }
    const up = http.request(
      { host: target.split(':')[0], port: Number(target.split(':')[1]), method: req.method, path: p, headers: { ...req.headers, host: target } },
      (ur) => {
        const headers = { ...ur.headers };
        if (typeof headers.location === 'string') headers.location = headers.location.replace(`http://${target}`, `http://${self}`);
        log.push({ method: req.method ?? '', path: p, status: ur.statusCode ?? 0, range });
        res.writeHead(ur.statusCode ?? 502, headers);
        const drop = rules.dropBlob && drops > 0 && req.method === 'GET' && rules.dropBlob.match.test(p) && (ur.statusCode === 200 || ur.statusCode === 206);
        if (!drop) {
          ur.pipe(res);
          return;
        }
        drops--;
        let sent = 0;
        ur.on('data', (c: Buffer) => {
          if (sent >= rules.dropBlob!.afterBytes) return;
          const room = rules.dropBlob!.afterBytes - sent;
          res.write(c.subarray(0, room));
          sent += Math.min(room, c.length);
          if (sent >= rules.dropBlob!.afterBytes) {
            ur.destroy();
            res.socket?.destroy();
          }
        });
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  self = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return {
    host: self,
    log,
    stop: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
