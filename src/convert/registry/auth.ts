/**
 * Registry credentials and challenges: `--creds user:pass`, the Docker CLI's
 * `~/.docker/config.json` (`auths`, `credHelpers`, `credsStore`), the
 * containers `auth.json`, and the `WWW-Authenticate` challenge grammar.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Host } from '../../core/host/host.js';
import { InvalidArgumentError } from '../../core/errors/errors.js';
import { canonicalRegistry } from '../reference.js';

export interface Credentials {
  username: string;
  password: string;
  /** An OAuth2 refresh token (`identitytoken` in the Docker config). */
  identityToken?: string | undefined;
}

export function parseCreds(s: string, what = '--creds'): Credentials {
  const i = s.indexOf(':');
  if (i <= 0) throw new InvalidArgumentError(`${what}: want USERNAME:PASSWORD`, 'CVMFS_THIN_BAD_CREDENTIALS');
  return { username: s.slice(0, i), password: s.slice(i + 1) };
}

/** `https://index.docker.io/v1/`, `host:5000`, `http://host/v2/` → canonical registry name. */
export function authKeyToRegistry(key: string): string {
  let k = key.replace(/^[a-z]+:\/\//, '');
  const slash = k.indexOf('/');
  if (slash >= 0) k = k.slice(0, slash);
  return canonicalRegistry(k);
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

interface DockerConfigFile {
  auths?: Record<string, AuthEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** Candidate auth files, most specific first. */
function authFiles(env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  if (env['REGISTRY_AUTH_FILE']) out.push(env['REGISTRY_AUTH_FILE']);
  if (env['DOCKER_CONFIG']) out.push(path.join(env['DOCKER_CONFIG'], 'config.json'));
  else out.push(path.join(env['HOME'] ?? os.homedir(), '.docker', 'config.json'));
  if (env['XDG_RUNTIME_DIR']) out.push(path.join(env['XDG_RUNTIME_DIR'], 'containers', 'auth.json'));
  return out;
}

function readConfig(file: string): DockerConfigFile | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as DockerConfigFile) : null;
  } catch (e) {
    throw new InvalidArgumentError(`${file}: not valid JSON: ${(e as Error).message}`, 'CVMFS_THIN_BAD_CREDENTIALS');
  }
}

function fromEntry(e: AuthEntry, file: string, key: string): Credentials | null {
  if (e.identitytoken) return { username: e.username ?? '', password: '', identityToken: e.identitytoken };
  if (e.auth) {
    const dec = Buffer.from(e.auth, 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i < 0) throw new InvalidArgumentError(`${file}: auths[${JSON.stringify(key)}].auth is not base64("user:password")`, 'CVMFS_THIN_BAD_CREDENTIALS');
    return { username: dec.slice(0, i), password: dec.slice(i + 1) };
  }
  if (e.username !== undefined && e.password !== undefined) return { username: e.username, password: e.password };
  return null;
}

/** Ask a Docker credential helper (`docker-credential-<name> get`, run by `host`); no shell. */
async function credentialHelper(host: Host, helper: string, serverUrl: string): Promise<Credentials | null> {
  if (!/^[A-Za-z0-9_.-]+$/.test(helper))
    return Promise.reject(new InvalidArgumentError(`credential helper name ${JSON.stringify(helper)} is not valid`, 'CVMFS_THIN_BAD_CREDENTIALS'));
  const r = await host.exec(`docker-credential-${helper}`, ['get'], { timeoutMs: 30_000, input: serverUrl });
  if (r.code !== 0) return null;
  try {
    const o = JSON.parse(r.stdout) as { Username?: string; Secret?: string };
    if (!o.Secret) return null;
    if (o.Username === '<token>') return { username: '', password: '', identityToken: o.Secret };
    return { username: o.Username ?? '', password: o.Secret };
  } catch {
    return null;
  }
}

/** Credentials for a registry from the auth files (their credential helpers run by `host`), or null (anonymous). */
export async function lookupCredentials(registry: string, host: Host, files: string[] = authFiles()): Promise<Credentials | null> {
  const want = canonicalRegistry(registry);
  for (const file of files) {
    const cfg = readConfig(file);
    if (!cfg) continue;
    for (const [key, entry] of Object.entries(cfg.auths ?? {})) {
      if (authKeyToRegistry(key) !== want) continue;
      const c = fromEntry(entry, file, key);
      if (c) return c;
    }
    const helperKey = Object.keys(cfg.credHelpers ?? {}).find((k) => authKeyToRegistry(k) === want);
    const helper = helperKey ? cfg.credHelpers![helperKey] : cfg.credsStore;
    if (helper) {
      const server = want === 'docker.io' ? 'https://index.docker.io/v1/' : want;
      const c = await credentialHelper(host, helper, server);
      if (c) return c;
    }
  }
  return null;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse `WWW-Authenticate` (RFC 7235 auth-params, quoted strings). Several challenges may be comma separated. */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => {
    while (i < n && (header[i] === ' ' || header[i] === '\t' || header[i] === ',')) i++;
  };
  const token = () => {
    const m = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(header.slice(i));
    if (!m) return '';
    i += m[0].length;
    return m[0];
  };
  while (i < n) {
    skipWs();
    const scheme = token();
    if (!scheme) break;
    const ch: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(ch);
    for (;;) {
      while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
      const save = i;
      const key = token();
      while (i < n && header[i] === ' ') i++;
      if (!key || header[i] !== '=') {
        i = save;
        break;
      }
      i++;
      while (i < n && header[i] === ' ') i++;
      let val = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          val += header[i];
          i++;
        }
        i++;
      } else {
        const m = /^[^,\s]*/.exec(header.slice(i))!;
        val = m[0];
        i += val.length;
      }
      ch.params[key.toLowerCase()] = val;
      while (i < n && header[i] === ' ') i++;
      if (header[i] === ',') {
        i++;
        // a following "token=" continues this challenge, a bare token starts a new one
        const look = /^\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+\s*=/.exec(header.slice(i));
        if (!look) break;
        continue;
      }
      break;
    }
  }
  return out;
}
