/**
 * A Host (src/core/host/host.ts) that does no system call: it records every call
 * and keeps a simulated mount table, so the daemons' semantics can be tested
 * as an ordinary user. Plain file I/O still happens for real (in temp dirs).
 */
import { mkdirSync, promises as fsp, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  bindSteps,
  type ExecResult,
  FS_MAGIC,
  type FsProbeOp,
  type FsProbeResult,
  type Host,
  type MountInfo,
  type OverlayMount,
  type PathArg,
} from '../../src/core/host/host.js';
import { MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, MS_SHARED, MS_SLAVE } from '../../src/core/host/sys.js';

export interface HostCall {
  op: string;
  args: unknown[];
}

function errno(code: string, what: string): Error {
  return Object.assign(new Error(`${what}: ${code}`), { code });
}

export interface SimMount extends MountInfo {
  readonly: boolean;
  propagation: 'private' | 'slave' | 'shared';
}

export class RecordingHost implements Host {
  readonly calls: HostCall[] = [];
  readonly mounts: SimMount[] = [];
  /** Paths whose statfs answers ENOTCONN (a dead FUSE process). */
  readonly broken = new Set<string>();
  /** Paths whose probes never answer until `unstall` (a stalled FUSE process). */
  readonly stalled = new Set<string>();
  private readonly stallWaiters: (() => void)[] = [];
  /** statfs magic per path (default: ext4-like 0xef53). */
  readonly magic = new Map<string, number>();
  /** Failure to inject: op name → error code thrown on the next call (then cleared). */
  readonly failNext = new Map<string, string>();
  /** Program runner for exec(); default: exit 0. */
  execHandler: (file: string, args: readonly string[]) => ExecResult | Promise<ExecResult> = () => ({ code: 0, stdout: '', stderr: '' });
  readonly xattrs = new Map<string, Map<string, Buffer>>();
  readonly locks = new Map<number, number>();

  private record(op: string, ...args: unknown[]): void {
    this.calls.push({ op, args });
    const f = this.failNext.get(op);
    if (f) {
      this.failNext.delete(op);
      throw errno(f, op);
    }
  }

  ops(op?: string): HostCall[] {
    return op ? this.calls.filter((c) => c.op === op) : this.calls;
  }

  mountedAt(target: string): SimMount | undefined {
    const t = path.resolve(target);
    for (let i = this.mounts.length - 1; i >= 0; i--) if (this.mounts[i]!.mountPoint === t) return this.mounts[i];
    return undefined;
  }

  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
    this.record('mount', source, target, fstype, flags, data);
    const t = path.resolve(target);
    if (flags & (MS_SHARED | MS_SLAVE | MS_PRIVATE)) {
      const m = this.mountedAt(t);
      if (!m) throw errno('EINVAL', `mount ${t}: not a mount point`);
      m.propagation = flags & MS_SHARED ? 'shared' : flags & MS_SLAVE ? 'slave' : 'private';
      return;
    }
    if (flags & MS_REMOUNT) {
      const m = this.mountedAt(t);
      if (!m) throw errno('EINVAL', `remount ${t}: not a mount point`);
      m.readonly = (flags & MS_RDONLY) !== 0;
      m.options = m.readonly ? 'ro' : 'rw';
      return;
    }
    if (flags & MS_BIND) {
      const src = path.resolve(source ?? '');
      const under = this.mountedAt(src);
      this.mounts.push({ mountPoint: t, root: src, fsType: under?.fsType ?? 'bind', source: src, options: 'rw', readonly: false, propagation: 'private' });
      if (flags & MS_REC) {
        for (const m of [...this.mounts]) {
          if (m.mountPoint.startsWith(`${src}/`)) this.mounts.push({ ...m, mountPoint: t + m.mountPoint.slice(src.length) });
        }
      }
      return;
    }
    this.mounts.push({
      mountPoint: t,
      root: '/',
      fsType: fstype ?? 'none',
      source: source ?? 'none',
      options: (flags & MS_RDONLY) !== 0 ? 'ro' : 'rw',
      readonly: (flags & MS_RDONLY) !== 0,
      propagation: 'private',
    });
  }

  umount(target: string, flags = 0): void {
    this.record('umount', target, flags);
    const t = path.resolve(target);
    const i = this.mounts.findLastIndex((m) => m.mountPoint === t);
    if (i < 0) throw errno('EINVAL', `umount2 ${t}`);
    this.mounts.splice(i, 1);
    // detach takes the mounts below along
    if (flags & 2) for (let j = this.mounts.length - 1; j >= 0; j--) if (this.mounts[j]!.mountPoint.startsWith(`${t}/`)) this.mounts.splice(j, 1);
  }

  bind(source: string, target: string, opts = {}): void {
    for (const s of bindSteps(source, target, opts)) this.mount(...s);
  }

  mountinfo(): MountInfo[] {
    this.calls.push({ op: 'mountinfo', args: [] });
    return this.mounts.map((m) => ({
      mountPoint: m.mountPoint,
      root: m.root,
      fsType: m.fsType,
      source: m.source,
      options: m.readonly ? 'ro' : 'rw',
      superOptions: m.superOptions ?? '',
    }));
  }

  private under(set: ReadonlySet<string>, p: string): boolean {
    const r = path.resolve(p);
    for (const b of set) if (r === b || r.startsWith(`${b}/`)) return true;
    return false;
  }

  /** A stalled path answers again: its waiting probes run. */
  unstall(p?: string): void {
    if (p === undefined) this.stalled.clear();
    else this.stalled.delete(p);
    for (const w of this.stallWaiters.splice(0)) w();
  }

  /** Probes run here, on real paths: `broken` answers ENOTCONN, `stalled` waits for `unstall`. */
  async probeFs(ops: readonly FsProbeOp[]): Promise<FsProbeResult[]> {
    this.calls.push({ op: 'probeFs', args: ops.map((o) => `${o.op} ${o.path}`) });
    const out: FsProbeResult[] = [];
    for (const o of ops) {
      while (this.under(this.stalled, o.path)) await new Promise<void>((r) => this.stallWaiters.push(r));
      let r: FsProbeResult;
      try {
        if (this.under(this.broken, o.path)) throw errno('ENOTCONN', `${o.op} ${o.path}`);
        if (o.op === 'statfs') r = { ok: true, type: this.statfsType(o.path) };
        else if (o.op === 'stat') {
          const st = await fsp.stat(o.path);
          r = { ok: true, uid: st.uid, gid: st.gid, dev: st.dev, dir: st.isDirectory() };
        } else if (o.op === 'realpath') {
          const real = await fsp.realpath(o.path);
          r = { ok: true, real, dir: (await fsp.stat(real)).isDirectory() };
        } else if (o.op === 'read') {
          const b = await fsp.readFile(o.path);
          r = o.text ? { ok: true, bytes: b.length, text: b.toString('utf8') } : { ok: true, bytes: Math.min(b.length, o.max ?? b.length) };
        } else r = { ok: true, entries: (await fsp.readdir(o.path)).length };
      } catch (e) {
        r = { ok: false, code: (e as NodeJS.ErrnoException).code ?? 'EIO', message: (e as Error).message };
      }
      out.push(r);
      if (!r.ok && o.required) break;
    }
    return out;
  }

  statfsType(p: string): number {
    this.record('statfs', p);
    const r = path.resolve(p);
    for (const b of this.broken) if (r === b || r.startsWith(`${b}/`)) throw errno('ENOTCONN', `statfs ${r}`);
    return this.magic.get(r) ?? (this.mountedAt(r)?.fsType === 'fuse' ? FS_MAGIC.FUSE : 0xef53);
  }

  /** An overlay mount: recorded with its lowers resolved, and added to the mount table as `overlay`. */
  mountOverlay(o: OverlayMount): void {
    const abs = (p: string) => path.resolve(o.relativeTo ?? process.cwd(), p);
    this.record('mountOverlay', {
      target: path.resolve(o.target),
      lowers: o.lowers.map(abs),
      upper: o.upper && abs(o.upper),
      work: o.work && abs(o.work),
      options: [...(o.options ?? [])],
    });
    const t = path.resolve(o.target);
    const superOptions = [
      ...(o.options ?? []),
      ...o.lowers.map((l) => `lowerdir+=${abs(l)}`),
      ...(o.upper ? [`upperdir=${abs(o.upper)}`, `workdir=${abs(o.work ?? '')}`] : []),
    ].join(',');
    this.mounts.push({
      mountPoint: t,
      root: '/',
      fsType: 'overlay',
      source: 'overlay',
      options: o.upper ? 'rw' : 'ro',
      readonly: !o.upper,
      propagation: 'private',
      superOptions,
    });
  }

  idmappedBindMount(source: string, target: string, usernsFd: number): void {
    this.record('idmappedBindMount', source, target, usernsFd);
    this.mounts.push({ mountPoint: path.resolve(target), root: source, fsType: 'idmapped', source, options: 'rw', readonly: false, propagation: 'private' });
  }

  mknod(p: PathArg, mode: number, major = 0, minor = 0): void {
    this.record('mknod', String(p), mode, major, minor);
    // a regular placeholder file stands in for the device node
    mkdirSync(path.dirname(String(p)), { recursive: true });
    writeFileSync(String(p), '');
  }

  mkWhiteout(p: PathArg): void {
    this.mknod(p, 0o020000, 0, 0);
  }

  lsetxattr(p: PathArg, name: PathArg, value: Buffer | string): void {
    this.record('lsetxattr', String(p), String(name));
    const m = this.xattrs.get(String(p)) ?? new Map<string, Buffer>();
    m.set(String(name), typeof value === 'string' ? Buffer.from(value) : value);
    this.xattrs.set(String(p), m);
  }

  lgetxattr(p: PathArg, name: PathArg): Buffer | null {
    return this.xattrs.get(String(p))?.get(String(name)) ?? null;
  }

  llistxattr(p: PathArg): string[] {
    return [...(this.xattrs.get(String(p))?.keys() ?? [])];
  }

  lchown(p: PathArg, uid: number, gid: number): void {
    this.record('lchown', String(p), uid, gid);
  }

  flock(fd: number, op: number): boolean {
    this.record('flock', fd, op);
    return true;
  }

  async exec(file: string, args: readonly string[]): Promise<ExecResult> {
    this.record('exec', file, [...args]);
    return this.execHandler(file, args);
  }
}
