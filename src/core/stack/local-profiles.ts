/**
 * The access profiles kept on a node (`<root>/profiles/<stack id>.json`,
 * recorded there by the snapshotter: thin-image/SPEC.md §8), read safely and
 * bounded. Until `cvmfs-thin profile publish` (given the files, it marks
 * nothing) writes one into the repository it is the only copy, so a sweep —
 * at the daemon's start, after a thin image's snapshot is removed, after a
 * recording; in the background, never awaited by a request — removes:
 *
 * - the profile of a stack that no snapshot on the node has any more when
 *   the repository holds a profile of that stack at least as new (`created`:
 *   it was published, or superseded by another node's or an opt-out), when
 *   it is not a valid profile of its stack (it could never be published), or
 *   once it is older than `unpublishedMs` (the window to publish it);
 * - then the oldest — those of stacks not on the node first — while more
 *   than `maxFiles` or `maxBytes` are kept: a node never fills its disk, not
 *   even one that records faster than it is published (logged);
 * - temporary files of an interrupted write, an hour old.
 *
 * Anything else in the directory (a symbolic link, a FIFO, a directory, a
 * file not named by a stack id) is never opened or followed: it is left
 * alone and logged once. Profiles are read without following a link and
 * without blocking on a FIFO.
 */
import { type BigIntStats, constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { type AccessProfile, MAX_PROFILE_BYTES, parseProfile, stackId } from '../thin/profile.js';

export interface KeepLimits {
  /** Profiles kept at most (the newest). */
  maxFiles: number;
  /** Their bytes at most. */
  maxBytes: number;
  /** An unpublished profile of a stack no longer on the node is kept this long after it was written. */
  unpublishedMs: number;
}

const DEFAULT_LIMITS: KeepLimits = { maxFiles: 500, maxBytes: 256 << 20, unpublishedMs: 7 * 86_400_000 };
const NAME = /^([a-f0-9]{64})\.json$/;
/** writeFileAtomic's temporary name for a profile. */
const TEMP = /^\.[a-f0-9]{64}\.json\.tmp-\d+-[a-z0-9]*$/;
const TEMP_MS = 3_600_000;
/** A repository that had no (newer) profile of a stack is asked again after this long. */
const RECHECK_MS = 600_000;

/** The stacks (stack id → its repository) of the images on the node; `complete` false when some could not be read. */
export interface LiveStacks {
  stacks: ReadonlyMap<string, string>;
  complete: boolean;
}

interface LocalProfilesContext {
  /** `<root>/profiles`. */
  dir: string;
  log: Logger;
  limits?: Partial<KeepLimits> | undefined;
  /** The images on the node now; without it nothing is swept (the graph driver: it does not record). */
  live?: (() => Promise<LiveStacks>) | undefined;
  /** The repository's profile of a stack: its text, null when it has none, undefined when it did not answer. */
  published: (id: string, repository: string | undefined) => Promise<string | null | undefined>;
}

interface Entry {
  id: string;
  file: string;
  st: BigIntStats;
}

export class LocalProfiles {
  private readonly limits: KeepLimits;
  /** Names left alone and logged. */
  private readonly warned = new Set<string>();
  /** The repository of each stack seen on the node (for a stack gone since). */
  private readonly repos = new Map<string, string>();
  /** Stacks whose repository had no profile as new as ours: when asked, of which file version. */
  private readonly unpublished = new Map<string, { at: number; mtimeNs: bigint }>();
  private run: Promise<void> | null = null;
  private again = false;
  private closed = false;

  constructor(private readonly o: LocalProfilesContext) {
    this.limits = { ...DEFAULT_LIMITS, ...o.limits };
  }

  /** Sweep in the background (one at a time; asked while one runs, it runs once more). Never awaited by a request. */
  sweep(): void {
    if (!this.o.live || this.closed) return;
    if (this.run) {
      this.again = true;
      return;
    }
    this.run = (async () => {
      do {
        this.again = false;
        // a turn later: the request that asked has answered
        await new Promise<void>((r) => setImmediate(r));
        await this.once().catch((e: unknown) => this.o.log.warn({ err: e, dir: this.o.dir }, 'sweeping local access profiles failed'));
      } while (this.again && !this.closed);
    })().finally(() => (this.run = null));
  }

  /** Wait for the sweep running now. */
  async idle(): Promise<void> {
    while (this.run) await this.run;
  }

  /** No sweep starts any more; the one running ends after its current step. */
  close(): Promise<void> {
    this.closed = true;
    return this.run ?? Promise.resolve();
  }

  /** A stack's profile kept here: its text, null when there is none, or why it is not read (logged once). */
  async read(id: string): Promise<{ text: string; st: BigIntStats } | null | string> {
    const dir = await fsp.lstat(this.o.dir).catch(() => null);
    if (!dir) return null;
    if (!dir.isDirectory()) return this.leftAlone('', dir);
    const file = path.join(this.o.dir, `${id}.json`);
    const st = await fsp.lstat(file, { bigint: true }).catch(() => null);
    if (!st) return null;
    if (!st.isFile()) return this.leftAlone(`${id}.json`, st);
    let fh;
    try {
      fh = await fsp.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'ENOENT' ? null : `cannot be read (${(e as Error).message})`;
    }
    try {
      const now = await fh.stat({ bigint: true });
      if (!now.isFile() || now.ino !== st.ino) return 'was replaced while read';
      if (now.size > BigInt(MAX_PROFILE_BYTES)) return `is larger than ${MAX_PROFILE_BYTES} bytes`;
      return { text: await fh.readFile('utf8'), st: now };
    } finally {
      await fh.close();
    }
  }

  /** Log an entry left alone, once while it is there; its reason. */
  private leftAlone(name: string, st: { isSymbolicLink(): boolean; isDirectory(): boolean; isFile(): boolean }): string {
    const why = st.isSymbolicLink()
      ? 'is a symbolic link'
      : st.isDirectory()
        ? 'is a directory'
        : st.isFile()
          ? 'is not named <stack id>.json'
          : 'is not a regular file';
    if (!this.warned.has(name)) {
      this.warned.add(name);
      this.o.log.warn({ file: path.join(this.o.dir, name) }, `local access profiles: left alone, never followed: it ${why}`);
    }
    return why;
  }

  private async once(): Promise<void> {
    const dir = await fsp.lstat(this.o.dir).catch(() => null);
    if (!dir) return;
    if (!dir.isDirectory()) return void this.leftAlone('', dir);
    const now = Date.now();
    const entries: Entry[] = [];
    const strange = new Set<string>();
    for (const name of await fsp.readdir(this.o.dir)) {
      if (this.closed) return;
      const file = path.join(this.o.dir, name);
      const st = await fsp.lstat(file, { bigint: true }).catch(() => null);
      const id = NAME.exec(name)?.[1];
      if (!st) continue;
      if (st.isFile() && id) entries.push({ id, file, st });
      else if (st.isFile() && TEMP.test(name)) {
        if (now - Number(st.mtimeMs) > TEMP_MS) await removeIfSame({ id: '', file, st });
      } else {
        strange.add(name);
        this.leftAlone(name, st);
      }
    }
    for (const w of this.warned) if (w !== '' && !strange.has(w)) this.warned.delete(w);
    this.warned.delete('');
    // the images after the listing: a profile recorded meanwhile is of an image on the node
    const live = await this.o.live!();
    for (const [id, repo] of live.stacks) this.repos.set(id, repo);
    const present = new Set(entries.map((e) => e.id));
    for (const m of [this.repos, this.unpublished]) for (const id of m.keys()) if (!present.has(id) && !live.stacks.has(id)) m.delete(id);
    const kept: Entry[] = [];
    for (const e of entries) {
      const why = live.complete && !live.stacks.has(e.id) && !this.closed ? await this.goes(e, now) : null;
      if (why && (await removeIfSame(e))) this.o.log.info({ file: e.file, why }, 'removed a local access profile: no image of its stack is on this node');
      else kept.push(e);
    }
    // the cap: the oldest first, those of images on the node last
    kept.sort((a, b) => Number(live.stacks.has(a.id)) - Number(live.stacks.has(b.id)) || cmp(a.st.mtimeNs, b.st.mtimeNs));
    let bytes = kept.reduce((n, e) => n + Number(e.st.size), 0);
    let count = kept.length;
    const capped: string[] = [];
    for (const e of kept) {
      if (count <= this.limits.maxFiles && bytes <= this.limits.maxBytes) break;
      if (!(await removeIfSame(e))) continue;
      count--;
      bytes -= Number(e.st.size);
      capped.push(e.id);
    }
    if (capped.length > 0)
      this.o.log.warn(
        { dir: this.o.dir, removed: capped, maxFiles: this.limits.maxFiles, maxBytes: this.limits.maxBytes },
        `local access profiles over the cap: removed the ${capped.length} oldest (publish recorded profiles sooner: cvmfs-thin profile publish)`,
      );
  }

  /** Why the profile of a stack no longer on the node goes now, or null: it stays. */
  private async goes(e: Entry, now: number): Promise<string | null> {
    const r = await this.read(e.id);
    if (r === null || typeof r === 'string' || r.st.ino !== e.st.ino || r.st.mtimeNs !== e.st.mtimeNs) return null;
    const mine = validOf(r.text, e.id);
    if (!mine) return 'not a valid profile of its stack: it could never be published';
    if (now - Number(e.st.mtimeMs) >= this.limits.unpublishedMs)
      return `older than the ${Math.round(this.limits.unpublishedMs / 3_600_000)} h it is kept to be published`;
    const asked = this.unpublished.get(e.id);
    if (asked && asked.mtimeNs === e.st.mtimeNs && now - asked.at < RECHECK_MS) return null;
    const text = await this.o.published(e.id, this.repos.get(e.id));
    if (text === undefined) return null; // the repository did not answer: asked again at the next sweep
    const theirs = text === null ? null : validOf(text, e.id);
    if (theirs && Date.parse(theirs.created) >= Date.parse(mine.created)) return 'the repository has it (published) or a newer one';
    this.unpublished.set(e.id, { at: now, mtimeNs: e.st.mtimeNs });
    return null;
  }
}

/** The profile in `text` if it is a valid one of stack `id`. */
function validOf(text: string, id: string): AccessProfile | null {
  try {
    const p = parseProfile(text);
    return stackId(p.layers) === id ? p : null;
  } catch {
    return null;
  }
}

const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

/** Unlink `e.file` if it is still the regular file judged (unlink never follows a link). */
async function removeIfSame(e: Entry): Promise<boolean> {
  const st = await fsp.lstat(e.file, { bigint: true }).catch(() => null);
  if (!st?.isFile() || st.ino !== e.st.ino || st.mtimeNs !== e.st.mtimeNs) return false;
  try {
    await fsp.unlink(e.file);
    return true;
  } catch {
    return false;
  }
}
