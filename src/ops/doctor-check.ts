/**
 * `cvmfs-thin doctor`: what every check shares — the result shape, the
 * options (file locations, so tests run on copies) and readers of the
 * daemons' config files that answer "not there" instead of throwing.
 */
import { readFileSync } from 'node:fs';
import type { Host } from '../core/host/host.js';
import { parseTomlFile } from './toml-edit.js';

export type Status = 'pass' | 'warn' | 'fail' | 'skip';

export interface Check {
  id: string;
  status: Status;
  /** what was found */
  detail: string;
  /** what to do about it (warn/fail) */
  fix?: string;
}

export interface DoctorOptions {
  host: Host;
  containerdConfig: string;
  daemonJson: string;
  snapshotterConfig: string;
  graphdriverConfig: string;
  volumePluginConfig: string;
  systemdDir: string;
  /** override the config files' / defaults' CVMFS location */
  cvmfsRoot?: string | undefined;
  repository?: string | undefined;
  /** /proc/filesystems and /sys/module/overlay/parameters (tests) */
  procFilesystems?: string;
  overlayParameters?: string;
  kernelRelease?: string;
  timeoutMs?: number;
  /** State directories whose containers are checked (default: the config files' `root` / `state-dir`, else the daemons' defaults). */
  snapshotterRoot?: string | undefined;
  graphdriverStateDir?: string | undefined;
  /** The CVMFS client's programs and the environment they are found in (tests: fakes on PATH). */
  cvmfsConfig?: string | undefined;
  cvmfsTalk?: string | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  /** A Stratum-0's repository configurations (default /etc/cvmfs/repositories.d). */
  cvmfsServerConfDir?: string | undefined;
}

export function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** A string key of a daemon's TOML config (missing or unreadable file: undefined). */
export function tomlKey(file: string, key: string): string | undefined {
  const t = readText(file);
  if (t === null) return undefined;
  try {
    const v = parseTomlFile(t, file)[key];
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The string-list key of a daemon's TOML config. */
export function tomlList(file: string, key: string): string[] {
  const t = readText(file);
  if (t === null) return [];
  try {
    const v = parseTomlFile(t, file)[key];
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
}
