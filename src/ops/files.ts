/**
 * What `cvmfs-thin setup` does to files, with a manifest so that `--undo`
 * puts every file back byte for byte (content and mode) and removes what
 * setup created.
 *
 * State directory (default /var/lib/cvmfs-thin/setup):
 *   manifest.json   { version: 1, files: { <path>: Entry }, dirs: { <dir>: [targets] } }
 *   backups/<n>     the original content of a file, taken before setup first changed it
 *
 * A file is shared by the targets that changed it (containerd's config by
 * `setup containerd` and `setup docker --mode containerd-store`): undoing one
 * target restores the original only when no other target still needs it.
 * The manifest is written (and fsynced) before the file it describes changes.
 */
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../core/errors/errors.js';
import { writeFileAtomic } from '../core/fs/fsutil.js';
import { unifiedDiff } from './diff.js';

export type Target = 'containerd' | 'docker' | 'volumes' | 'podman';

/** One planned change of one file: `after` null deletes it. */
export interface FileChange {
  path: string;
  before: Buffer | null;
  after: Buffer | null;
  /** Mode for a created file (an existing file keeps its own). */
  mode?: number;
}

interface Entry {
  /** backups/<n>, or null when setup created the file. */
  backup: string | null;
  mode: number | null;
  targets: Target[];
  /** sha256 of what setup last wrote. */
  written: string;
}

interface Manifest {
  version: 1;
  files: Record<string, Entry>;
  /** Directories setup created, and for which targets. */
  dirs: Record<string, Target[]>;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export function readIfExists(file: string): Buffer | null {
  try {
    return readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new InvalidArgumentError(`${file}: cannot read: ${(e as Error).message}`, 'CVMFS_THIN_BAD_CONFIG');
  }
}

/** The diff `--dry-run` prints for one change. */
export function changeDiff(c: FileChange): string {
  const a = c.before?.toString('utf8') ?? '';
  const b = c.after?.toString('utf8') ?? '';
  return unifiedDiff(a, b, c.before ? c.path : '/dev/null', c.after ? c.path : '/dev/null');
}

export function changed(c: FileChange): boolean {
  return !(c.before === null ? c.after === null : c.after !== null && c.before.equals(c.after));
}

export class SetupState {
  private m: Manifest;
  private constructor(
    readonly dir: string,
    m: Manifest,
  ) {
    this.m = m;
  }

  static open(dir: string): SetupState {
    const file = path.join(dir, 'manifest.json');
    const raw = readIfExists(file);
    if (raw === null) return new SetupState(dir, { version: 1, files: {}, dirs: {} });
    let m: Manifest;
    try {
      m = JSON.parse(raw.toString('utf8')) as Manifest;
    } catch (e) {
      throw new FailedPreconditionError(`${file}: not valid JSON (${(e as Error).message}); fix or remove it`, 'CVMFS_THIN_BAD_STATE');
    }
    if (m.version !== 1 || typeof m.files !== 'object' || m.files === null)
      throw new FailedPreconditionError(`${file}: unknown format`, 'CVMFS_THIN_BAD_STATE');
    m.dirs ??= {};
    return new SetupState(dir, m);
  }

  /** Files (and their targets) setup is responsible for. */
  entries(): [string, Target[]][] {
    return Object.entries(this.m.files).map(([p, e]) => [p, [...e.targets]]);
  }

  private async save(): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(path.join(this.dir, 'manifest.json'), `${JSON.stringify(this.m, null, 2)}\n`, 0o600);
  }

  /** Nothing left to undo: remove the state (manifest, empty backup directory, the directory itself when empty). */
  private forget(): void {
    for (const p of [path.join(this.dir, 'manifest.json')]) if (existsSync(p)) unlinkSync(p);
    for (const d of [path.join(this.dir, 'backups'), this.dir]) {
      try {
        rmdirSync(d);
      } catch {
        /* not empty (replaced/ copies are kept) or absent */
      }
    }
  }

  private nextBackup(): string {
    const dir = path.join(this.dir, 'backups');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const used = new Set(readdirSync(dir));
    let n = 1;
    while (used.has(String(n).padStart(4, '0'))) n++;
    return path.join('backups', String(n).padStart(4, '0'));
  }

  /** Make the changes (after backing up the originals), recording them for `target`. */
  async apply(target: Target, changes: readonly FileChange[]): Promise<void> {
    for (const c of changes) {
      const e = this.m.files[c.path];
      if (!changed(c)) {
        // already as wanted: share responsibility only if setup made it so
        if (e && !e.targets.includes(target)) {
          e.targets.push(target);
          await this.save();
        }
        continue;
      }
      if (!e) {
        let backup: string | null = null;
        let mode: number | null = null;
        if (c.before !== null) {
          backup = this.nextBackup();
          mode = statSync(c.path).mode & 0o7777;
          await writeFileAtomic(path.join(this.dir, backup), c.before, 0o600);
        }
        this.m.files[c.path] = { backup, mode, targets: [target], written: '' };
      } else if (!e.targets.includes(target)) e.targets.push(target);
      for (const d of missingDirs(path.dirname(c.path))) {
        const owners = (this.m.dirs[d] ??= []);
        if (!owners.includes(target)) owners.push(target);
      }
      this.m.files[c.path]!.written = c.after ? sha(c.after) : '';
      await this.save();
      if (c.after === null) unlinkSync(c.path);
      else {
        mkdirSync(path.dirname(c.path), { recursive: true, mode: 0o755 });
        const mode = c.before !== null ? statSync(c.path).mode & 0o7777 : (c.mode ?? 0o644);
        const dest = through(c.path);
        await writeFileAtomic(dest, c.after, mode);
        chmodSync(dest, mode);
      }
    }
  }

  /**
   * What undoing `target` does: the files to restore (or delete), and
   * warnings about files changed since setup wrote them.
   */
  planUndo(target: Target): { changes: FileChange[]; warnings: string[] } {
    const changes: FileChange[] = [];
    const warnings: string[] = [];
    for (const [p, e] of Object.entries(this.m.files)) {
      if (!e.targets.includes(target) || e.targets.length > 1) continue;
      const now = readIfExists(p);
      if ((now === null ? '' : sha(now)) !== e.written)
        warnings.push(`${p} was changed after setup wrote it; those changes are saved in ${path.join(this.dir, 'replaced')}`);
      const original = e.backup === null ? null : readFileSync(path.join(this.dir, e.backup));
      changes.push({ path: p, before: now, after: original, ...(e.mode !== null ? { mode: e.mode } : {}) });
    }
    return { changes, warnings };
  }

  /** Undo `target`: restore originals byte for byte (and their modes), remove created files and directories. */
  async undo(target: Target, only: (file: string) => boolean = () => true): Promise<FileChange[]> {
    const changes = this.planUndo(target).changes.filter((c) => only(c.path));
    for (const c of changes) {
      const e = this.m.files[c.path]!;
      if (c.before !== null && sha(c.before) !== e.written) {
        const keep = path.join(this.dir, 'replaced', `${path.basename(c.path)}.${Date.now()}`);
        mkdirSync(path.dirname(keep), { recursive: true, mode: 0o700 });
        await writeFileAtomic(keep, c.before, 0o600);
      }
      if (c.after === null) {
        if (c.before !== null) unlinkSync(c.path);
      } else {
        mkdirSync(path.dirname(c.path), { recursive: true });
        const dest = through(c.path);
        await writeFileAtomic(dest, c.after, e.mode ?? 0o644);
        chmodSync(dest, e.mode ?? 0o644);
      }
      if (e.backup) unlinkSync(path.join(this.dir, e.backup));
      delete this.m.files[c.path];
      await this.save();
    }
    // shared files stay (the other targets still need them), without this target
    for (const [p, e] of Object.entries(this.m.files)) if (e.targets.length > 1 && only(p)) e.targets = e.targets.filter((t) => t !== target);
    // directories setup created, deepest first, when empty and no longer needed
    for (const d of Object.keys(this.m.dirs).sort((a, b) => b.length - a.length)) {
      const ts = this.m.dirs[d]!.filter((t) => t !== target);
      if (ts.length > 0) {
        this.m.dirs[d] = ts;
        continue;
      }
      try {
        rmdirSync(d);
        delete this.m.dirs[d];
      } catch (e) {
        // gone already: forget it; not empty (files of another step or someone else's): keep it for later
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') delete this.m.dirs[d];
      }
    }
    if (Object.keys(this.m.files).length === 0 && Object.keys(this.m.dirs).length === 0) this.forget();
    else await this.save();
    return changes;
  }
}

/** Where to write `file`: a symbolic link (a config kept elsewhere) stays a link, its target is written. */
function through(file: string): string {
  try {
    return lstatSync(file).isSymbolicLink() ? realpathSync(file) : file;
  } catch {
    return file;
  }
}

/** The ancestors of `dir` (itself included) that do not exist yet, outermost first. */
function missingDirs(dir: string): string[] {
  const out: string[] = [];
  for (let d = dir; !existsSync(d); d = path.dirname(d)) {
    out.unshift(d);
    if (path.dirname(d) === d) break;
  }
  return out;
}
