/**
 * Test harness for the Docker volume plugin: `cvmfs-thin volume-plugin` as a
 * real process (the built CLI) on a legacy discovery socket, and a busybox
 * image for Debian's dockerd 20.10.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readMountinfo } from '../../src/core/fsutil.js';
import { CLI } from '../helpers/env.js';
import { buildImage, busyboxEntries, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, PLUGIN_DIR, pluginCall } from '../graphdriver/harness.js';


export interface VolumePlugin {
  name: string;
  socket: string;
  proc: ChildProcess;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Start `volume-plugin --socket /run/docker/plugins/<name>.sock ARGS` (or on
 * `opts.socket`) and wait until it answers Plugin.Activate.
 */
export async function startVolumePlugin(name: string, args: string[], opts: { socket?: string; timeoutMs?: number } = {}): Promise<VolumePlugin> {
  const socket = opts.socket ?? path.join(PLUGIN_DIR, `${name}.sock`);
  const timeoutMs = opts.timeoutMs ?? 20_000;
  const proc = spawn(process.execPath, [CLI, 'volume-plugin', '--socket', socket, '--log-level', 'debug', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`volume plugin exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > timeoutMs) {
      proc.kill('SIGKILL');
      await exited;
      rmSync(socket, { force: true }); // a stale socket makes dockerd retry it for ~15 s on every volume ls
      throw new Error(`volume plugin did not start:\n${out}`);
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

/** Load a small busybox image into a dockerd. */
export async function loadBusybox(dockerd: Dockerd, dir: string, name = 'dvtest/bb:1'): Promise<string> {
  const tar = path.join(dir, 'bb.tar');
  if (!existsSync(tar)) await writeDockerArchive(tar, await buildImage(name, [busyboxEntries()]));
  await dockerd.docker(['load', '-i', tar]);
  return name;
}

/** How many times `mountPoint` is mounted in this (the host's) mount namespace. */
export function mountCount(mountPoint: string): number {
  return readMountinfo().filter((m) => m.mountPoint === mountPoint).length;
}

/** Our backend mounts below `mountsDir`. */
export function mountsBelow(mountsDir: string): string[] {
  return readMountinfo()
    .map((m) => m.mountPoint)
    .filter((mp) => mp.startsWith(`${mountsDir}/`))
    .sort();
}

/** Run the command to completion (start-up errors). */
export async function runVolumePluginCommand(args: string[], timeoutMs = 20_000): Promise<{ code: number | null; out: string }> {
  const proc = spawn(process.execPath, [CLI, 'volume-plugin', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  clearTimeout(t);
  return { code, out };
}
