/** A private containerd 1.6 (Debian) with our snapshotter as a proxy plugin, for end-to-end tests. */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const pexec = promisify(execFile);

export interface Containerd {
  dir: string;
  address: string;
  proc: ChildProcess;
  log: () => string;
  /** Run ctr against this containerd (namespace "e2e"); rejects with stdout+stderr on failure. */
  ctr(args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<string>;
  stop(): Promise<void>;
}

export async function startContainerd(dir: string, snapshotterSocket: string, pluginName = 'cvmfs-snapshotter'): Promise<Containerd> {
  mkdirSync(dir, { recursive: true });
  const address = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  writeFileSync(
    config,
    `version = 2
root = "${dir}/root"
state = "${dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${address}"
[proxy_plugins]
  [proxy_plugins.${pluginName}]
    type = "snapshot"
    address = "${snapshotterSocket}"
`,
  );
  const proc = spawn('containerd', ['--config', config, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const t0 = Date.now();
  while (!existsSync(address) || !out.includes('containerd successfully booted')) {
    if (proc.exitCode !== null) throw new Error(`containerd exited:\n${out}`);
    if (Date.now() - t0 > 30_000) throw new Error(`containerd did not start:\n${out}`);
    await sleep(100);
  }
  const ctr = async (args: string[], opts: { timeoutMs?: number } = {}) => {
    try {
      const r = await pexec('ctr', ['--address', address, '--namespace', 'e2e', ...args], { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 << 20 });
      return r.stdout;
    } catch (e) {
      const x = e as { stdout?: string; stderr?: string; message: string };
      throw new Error(`ctr ${args.join(' ')} failed: ${x.message}\n${x.stdout ?? ''}${x.stderr ?? ''}`);
    }
  };
  return {
    dir,
    address,
    proc,
    log: () => out,
    ctr,
    async stop() {
      // tasks first, so that no shim is left behind
      try {
        const tasks = (await ctr(['tasks', 'ls', '-q'])).split('\n').filter(Boolean);
        for (const t of tasks) await ctr(['tasks', 'kill', '-s', 'SIGKILL', t]).catch(() => undefined);
        await sleep(300);
        for (const t of tasks) await ctr(['tasks', 'rm', '-f', t]).catch(() => undefined);
        const cs = (await ctr(['containers', 'ls', '-q'])).split('\n').filter(Boolean);
        for (const c of cs) await ctr(['containers', 'rm', c]).catch(() => undefined);
      } catch {
        /* containerd may already be gone */
      }
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}
