/** Test helpers around the simulator: state dirs cleaned up (mounts first), writes inside a transaction, small tars. */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { MNT_DETACH, umount } from '../../../src/core/host/sys.js';
import { mountPoints } from './fsops.js';
import { init, type InitOptions, publish, simPaths, transaction } from './sim.js';
import { simArgv } from './command.js';

/**
 * A directory for simulated repositories, made before the file's first test;
 * everything mounted under it is detached and it is removed after the file
 * (neither happens when no test of the file runs).
 */
export function simBase(prefix = 'cvmfs-sim-test-'): string {
  const base = path.join(fs.realpathSync(os.tmpdir()), `${prefix}${process.pid}-${randomBytes(4).toString('hex')}`);
  beforeAll(() => {
    fs.mkdirSync(base, { mode: 0o700 });
  });
  afterAll(() => {
    cleanUnder(base);
    fs.rmSync(base, { recursive: true, force: true });
  });
  return base;
}

/** Detach every mount under `dir` (deepest first). */
export function cleanUnder(dir: string): void {
  for (const m of mountPoints()
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length)) {
    try {
      umount(m, MNT_DETACH);
    } catch {
      /* already gone */
    }
  }
}

let seq = 0;

/** A new simulated repository in `base`. */
export function newSim(base: string, opts: InitOptions = {}): string {
  const S = path.join(base, `s${++seq}`);
  init(S, opts);
  return S;
}

/** transaction → fn(S/repo) → publish; returns the publish warnings. */
export async function inTransaction(S: string, fn: (repo: string) => void | Promise<void>): Promise<string[]> {
  transaction(S);
  await fn(simPaths(S).repo);
  return publish(S).warnings;
}

/** Run the CLI (argv, no shell). */
export function runSim(args: string[], input?: Buffer): { code: number; stdout: string; stderr: string } {
  const [cmd, ...rest] = simArgv(...args);
  const r = spawnSync(cmd!, rest, { input: input ?? Buffer.alloc(0), encoding: 'buffer', timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A tar of a staging directory made by GNU tar with every xattr and numeric owners. */
export function tarOf(staging: string): Buffer {
  return execFileSync('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', staging, '-cf', '-', '.'], {
    maxBuffer: 1 << 28,
  });
}

/** A raw security.capability value (cap_net_bind_service=ep, VFS_CAP_REVISION_2), as setcap writes it. */
export const CAPABILITY = Buffer.from('AQAAAgAgAAAAAAAAAAAAAAAAAAA=', 'base64');

export function mode(p: string): number {
  return fs.lstatSync(p).mode & 0o7777;
}
