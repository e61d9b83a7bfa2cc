/**
 * Test harness for the Docker volume plugin: `cvmfs-thin volume-plugin` as a
 * real process (the built CLI) on a legacy discovery socket, and a busybox
 * image for Debian's dockerd 20.10.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { readMountinfo } from '../../src/core/fs/fsutil.js';
import { CLI } from '../helpers/env.js';
import { buildImage, busyboxEntries, writeDockerArchive } from '../helpers/oci-image.js';
import { type Dockerd, type Plugin, startPluginDaemon } from '../graphdriver/harness.js';

export type VolumePlugin = Plugin;

/**
 * Start `volume-plugin --socket /run/docker/plugins/<name>.sock ARGS` (or on
 * `opts.socket`) and wait until it answers Plugin.Activate.
 */
export function startVolumePlugin(name: string, args: string[], opts: { socket?: string; timeoutMs?: number } = {}): Promise<VolumePlugin> {
  return startPluginDaemon('volume-plugin', name, args, opts);
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
