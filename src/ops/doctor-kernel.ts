/**
 * `cvmfs-thin doctor`, the kernel part: the overlay file system and its
 * module parameters, and which idmapped mounts the running kernel supports.
 */
import os from 'node:os';
import path from 'node:path';
import { type Check, type DoctorOptions, readText } from './doctor-check.js';

const param = (dir: string, name: string) => readText(path.join(dir, name))?.trim();

export function overlayChecks(o: DoctorOptions): Check[] {
  const fs = readText(o.procFilesystems ?? '/proc/filesystems') ?? '';
  const dir = o.overlayParameters ?? '/sys/module/overlay/parameters';
  const out: Check[] = [];
  if (!/\boverlay$/m.test(fs)) {
    out.push({
      id: 'overlayfs',
      status: 'fail',
      detail: 'the kernel has no overlay file system loaded',
      fix: 'modprobe overlay (and add "overlay" to /etc/modules-load.d/)',
    });
    return out;
  }
  out.push({ id: 'overlayfs', status: 'pass', detail: 'overlay file system available' });
  const index = param(dir, 'index');
  const redirect = param(dir, 'redirect_dir');
  const metacopy = param(dir, 'metacopy');
  const on = (v: string | undefined) => v === 'Y' || v === 'on' || v === 'follow';
  const bad = [...(on(redirect) ? ['redirect_dir'] : []), ...(on(metacopy) ? ['metacopy'] : [])];
  const shown = `index=${index ?? '-'} redirect_dir=${redirect ?? '-'} metacopy=${metacopy ?? '-'}`;
  if (bad.length > 0) {
    out.push({
      id: 'overlay-parameters',
      status: 'warn',
      detail: `${shown}: with ${bad.join(' and ')} on, renamed directories and metadata-only copies are stored as overlay redirects, which docker diff/commit/save and image layer diffs of containers do not capture`,
      fix: `echo N > /sys/module/overlay/parameters/${bad[0]} (for every: ${bad.map((b) => `${b}=off`).join(' ')} in "options overlay …" under /etc/modprobe.d/)`,
    });
  } else {
    out.push({
      id: 'overlay-parameters',
      status: 'pass',
      detail: `${shown}${index === 'Y' ? ' (our overlay mounts pass index=off, as containerd and dockerd do)' : ''}`,
    });
  }
  return out;
}

export function idmapCheck(o: DoctorOptions): Check {
  const rel = o.kernelRelease ?? os.release();
  const m = /^(\d+)\.(\d+)/.exec(rel);
  const v = m ? Number(m[1]) * 1000 + Number(m[2]) : 0;
  if (v >= 6012)
    return {
      id: 'idmapped-mounts',
      status: 'pass',
      detail: `kernel ${rel}: idmapped mounts, overlay on idmapped layers, and FUSE idmapping (if the CVMFS client allows it)`,
    };
  if (v >= 5019)
    return {
      id: 'idmapped-mounts',
      status: 'pass',
      detail: `kernel ${rel}: idmapped mounts and overlay on idmapped layers (FUSE, i.e. a real /cvmfs, needs 6.12)`,
    };
  return {
    id: 'idmapped-mounts',
    status: 'warn',
    detail: `kernel ${rel}: ${v >= 5012 ? 'idmapped mounts, but overlay refuses idmapped lower layers before 5.19' : 'no idmapped mounts (5.12)'}; with dockerd --userns-remap, thin images show CVMFS files as nobody`,
    fix: 'a kernel ≥ 5.19 (≥ 6.12 for FUSE) if you use --userns-remap; otherwise nothing to do',
  };
}
