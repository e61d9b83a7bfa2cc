/** Start/stop `cvmfs-thin snapshotter` as a real process for tests. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI } from './env.js';
import { SnapClient } from './grpc.js';

export interface Daemon {
  proc: ChildProcess;
  client: SnapClient;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export async function startDaemon(args: string[], socket: string, timeoutMs = 20_000): Promise<Daemon> {
  const proc = spawn(process.execPath, [CLI, 'snapshotter', '--address', socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const t0 = Date.now();
  while (!existsSync(socket) || !out.includes('snapshotter serving')) {
    if (proc.exitCode !== null) throw new Error(`snapshotter exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > timeoutMs) {
      proc.kill('SIGKILL');
      throw new Error(`snapshotter did not start:\n${out}`);
    }
    await sleep(50);
  }
  const client = new SnapClient(socket);
  return {
    proc,
    client,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      client.close();
      if (proc.exitCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** Run the CLI to completion. */
export async function runCli(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; out: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  clearTimeout(t);
  return { code, out };
}
