/** Mount what a snapshotter returns, the way containerd's mount.All does (incl. lowerdir compaction). */
import path from 'node:path';
import type { Mount } from '../../src/core/stack/mounts.js';
import { MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, mount, umount } from '../../src/core/host/sys.js';

export function mountAll(ms: Mount[], target: string): void {
  for (const m of ms) {
    if (m.type === 'bind') {
      const ro = m.options.includes('ro');
      mount(m.source, target, null, MS_BIND | (m.options.includes('rbind') ? MS_REC : 0), null);
      if (ro) mount('', target, null, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, null);
      continue;
    }
    if (m.type !== 'overlay') throw new Error(`unsupported mount type ${m.type}`);
    let opts = m.options;
    let chdir: string | null = null;
    if (opts.join(',').length >= 4096 - 512) {
      // containerd: compactLowerdirOption (common parent of the lowerdirs)
      const i = opts.findIndex((o) => o.startsWith('lowerdir='));
      const dirs = opts[i]!.slice('lowerdir='.length).split(':');
      let prefix = dirs[0]!;
      for (const d of dirs) while (!d.startsWith(prefix)) prefix = prefix.slice(0, -1);
      chdir = path.dirname(prefix.endsWith('/') ? prefix + 'x' : prefix);
      opts = [...opts.slice(0, i), ...opts.slice(i + 1), `lowerdir=${dirs.map((d) => d.slice(chdir!.length + 1)).join(':')}`];
    }
    const cwd = process.cwd();
    try {
      if (chdir) process.chdir(chdir);
      mount('overlay', target, 'overlay', 0, opts.join(','));
    } finally {
      process.chdir(cwd);
    }
  }
}

export function unmountAll(target: string): void {
  for (;;) {
    try {
      umount(target);
    } catch (e) {
      if ((e as { code?: string }).code === 'EINVAL') return;
      throw e;
    }
  }
}
