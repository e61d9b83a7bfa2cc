/**
 * Test harness for the graph driver: the plugin as a real `cvmfs-thin
 * graphdriver` process on a legacy discovery socket, Debian's dockerd 20.10
 * with its own data root, exec root and socket, the 20.10 docker CLI, and a
 * raw HTTP client for the plugin socket. Everything it starts it stops, and
 * it unmounts what dockerd or the plugin left below its directory.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { MNT_DETACH, umount } from '../../src/core/host/sys.js';
import { CLI } from '../helpers/env.js';

/** The Debian docker.io CLI (20.10): another, newer docker CLI may come first in PATH. */
export const DOCKER = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
export const DOCKERD = existsSync('/usr/sbin/dockerd') ? '/usr/sbin/dockerd' : 'dockerd';
export const PLUGIN_DIR = '/run/docker/plugins';

/** A short base directory: containerd's socket path under exec-root must stay below 108 bytes. */
export function shortTempDir(prefix: string): string {
  mkdirSync('/tmp', { recursive: true });
  return mkdtempSync(path.join('/tmp', prefix));
}

/** Lazily unmount everything at or below `dir`, deepest first. */
export function unmountBelow(dir: string): number {
  let n = 0;
  for (let round = 0; round < 5; round++) {
    const mps = readMountinfo()
      .map((m) => m.mountPoint)
      .filter((mp) => mp === dir || mp.startsWith(`${dir}/`))
      .sort((a, b) => b.length - a.length);
    if (mps.length === 0) break;
    for (const mp of mps) {
      try {
        umount(mp, MNT_DETACH);
        n++;
      } catch {
        /* already gone */
      }
    }
  }
  return n;
}

/** Remove a test directory after unmounting what is below it. */
export function removeTestDir(dir: string): void {
  unmountBelow(dir);
  rmSync(dir, { recursive: true, force: true });
}

export interface Plugin {
  name: string;
  socket: string;
  proc: ChildProcess;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startPlugin(name: string, args: string[], timeoutMs = 20_000): Promise<Plugin> {
  return startPluginDaemon('graphdriver', name, args, { timeoutMs });
}

/**
 * Start `cvmfs-thin COMMAND --socket /run/docker/plugins/<name>.sock ARGS` (or
 * on `opts.socket`) as a real process and wait until it answers Plugin.Activate.
 */
export async function startPluginDaemon(command: string, name: string, args: string[], opts: { socket?: string; timeoutMs?: number } = {}): Promise<Plugin> {
  const socket = opts.socket ?? path.join(PLUGIN_DIR, `${name}.sock`);
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const proc = spawn(process.execPath, [CLI, command, '--socket', socket, '--log-level', 'debug', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${command} exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > timeoutMs) {
      proc.kill('SIGKILL');
      await exited;
      rmSync(socket, { force: true }); // a stale socket makes dockerd retry it for ~15 s on every lookup
      throw new Error(`${command} did not start:\n${out}`);
    }
    if (existsSync(socket)) {
      const ok = await pluginCall(socket, 'Plugin.Activate').then(
        (r) => r.status === 200,
        () => false,
      );
      if (ok) break;
    }
    await sleep(25);
  }
  return {
    name,
    socket,
    proc,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(t);
      if (proc.signalCode === 'SIGKILL') rmSync(socket, { force: true });
      return code;
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Dockerd {
  dir: string;
  root: string;
  sock: string;
  proc: ChildProcess;
  log: () => string;
  docker(args: string[], opts?: { input?: Buffer | string; timeoutMs?: number; allowFail?: boolean }): Promise<RunResult>;
  stop(): Promise<void>;
}

/** Run a command, collecting output; rejects on a non-zero exit unless allowFail. */
export async function run(
  cmd: string,
  args: string[],
  opts: { input?: Buffer | string; timeoutMs?: number; allowFail?: boolean; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  p.stdin.on('error', () => undefined);
  p.stdin.end(opts.input ?? '');
  const t = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
  const code = await new Promise<number>((r) => p.once('close', (c) => r(c ?? -1)));
  clearTimeout(t);
  if (code !== 0 && !opts.allowFail) throw new Error(`${cmd} ${args.join(' ')} exited with ${code}\nstdout: ${stdout}\nstderr: ${stderr}`);
  return { code, stdout, stderr };
}

/**
 * Start dockerd (its own data root, exec root, pidfile and socket; no iptables,
 * no bridge) with storage driver `driver`. `dir` is reused across restarts.
 */
export async function startDockerd(dir: string, driver: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Dockerd> {
  const root = path.join(dir, 'root');
  const exec = path.join(dir, 'exec');
  const sock = path.join(dir, 'docker.sock');
  const pidfile = path.join(dir, 'dockerd.pid');
  const cliConfig = path.join(dir, 'cli');
  mkdirSync(cliConfig, { recursive: true });
  const args = [
    '--experimental',
    '--data-root',
    root,
    '--exec-root',
    exec,
    '--pidfile',
    pidfile,
    '-H',
    `unix://${sock}`,
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    '--log-level',
    'debug',
    '-s',
    driver,
    ...extra,
  ];
  const proc = spawn(DOCKERD, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let log = '';
  proc.stdout!.on('data', (d: Buffer) => (log += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const cliEnv = { ...process.env, DOCKER_CONFIG: cliConfig, DOCKER_HOST: `unix://${sock}` };
  const docker: Dockerd['docker'] = (a, o = {}) => run(DOCKER, a, { ...o, env: cliEnv });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 40_000);
      await exited;
      clearTimeout(t);
    }
    // dockerd leaves the bind mount of its data root (and container mounts) behind when it fails
    unmountBelow(root);
    unmountBelow(exec);
  };
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null) {
      await stop();
      throw new Error(`dockerd exited with ${proc.exitCode}:\n${log.slice(-4000)}`);
    }
    if (existsSync(sock)) {
      const r = await docker(['version', '--format', '{{.Server.Version}}'], { allowFail: true, timeoutMs: 10_000 });
      if (r.code === 0) break;
    }
    if (Date.now() - t0 > 60_000) {
      await stop();
      throw new Error(`dockerd did not start:\n${log.slice(-4000)}`);
    }
    await sleep(100);
  }
  return { dir, root, sock, proc, log: () => log, docker, stop };
}

export interface RawResponse {
  status: number;
  body: Buffer;
  json: () => Record<string, unknown>;
}

/** One plugin request over the unix socket, as dockerd makes it (POST, no Content-Type). */
export function pluginCall(
  socket: string,
  method: string,
  body?: unknown,
  opts: { query?: string; raw?: Buffer | NodeJS.ReadableStream; chunked?: boolean } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { Accept: 'application/vnd.docker.plugins.v1.2+json' };
    let payload: Buffer | undefined;
    if (opts.raw === undefined) {
      payload = Buffer.from(body === undefined ? '' : `${JSON.stringify(body)}\n`);
      headers['Content-Length'] = String(payload.length);
    } else if (Buffer.isBuffer(opts.raw) && !opts.chunked) {
      payload = opts.raw;
      headers['Content-Length'] = String(payload.length);
    } else headers['Transfer-Encoding'] = 'chunked';
    const req = http.request({ socketPath: socket, method: 'POST', path: `/${method}${opts.query ? `?${opts.query}` : ''}`, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const b = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, body: b, json: () => JSON.parse(b.toString() || '{}') as Record<string, unknown> });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (payload) req.end(payload);
    else if (Buffer.isBuffer(opts.raw)) req.end(opts.raw);
    else (opts.raw as NodeJS.ReadableStream).pipe(req);
  });
}

/** The layer IDs (directories) in a graph driver Home. */
export function layerDirs(home: string): string[] {
  const d = path.join(home, 'layers');
  if (!existsSync(d)) return [];
  return execFileSync('ls', ['-A', d])
    .toString()
    .split('\n')
    .filter((s) => s !== '');
}

export function readText(p: string): string {
  return readFileSync(p, 'utf8');
}
