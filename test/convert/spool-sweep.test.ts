/**
 * Archive spools (`cvmfs-thin-archive-*` in the temp dir) and their sweep:
 * a spool whose conversion died (kill -9) is removed, one whose conversion
 * still runs — in this process or another — is not, and nothing that is not
 * ours is touched: symbolic links are not followed, files, other users'
 * directories and spools with an odd lock file are left alone. The owner
 * locks go through the Host: the real one across processes, the simulated
 * one within this process.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { makeSpoolDir, OWNER_FILE, processStart, SPOOL_PREFIX, sweepStaleSpools as sweepWith } from '../../src/convert/image/spool-dir.js';
import { systemHost } from '../../src/core/host/host.js';
import { LOCK_EX, LOCK_NB } from '../../src/core/host/sys.js';
import { needs, tempDir } from '../helpers/env.js';
import { RecordingHost } from '../helpers/recording-host.js';

const DIST_MODULE = path.resolve(import.meta.dirname, '../../dist/convert/image/spool-dir.js');
const DIST_HOST = path.resolve(import.meta.dirname, '../../dist/core/host/host.js');
/** A sweep with the real host (owners in other processes hold real locks). */
const sweepStaleSpools = (root: string) => sweepWith(root, { host: systemHost });
const work = tempDir('cvmfs-thin-spool-');
let n = 0;
const freshRoot = () => {
  const r = path.join(work, `root${n++}`);
  fs.mkdirSync(r, { mode: 0o755 });
  return r;
};
const spools = (root: string) =>
  fs
    .readdirSync(root)
    .filter((x) => x.startsWith(SPOOL_PREFIX))
    .sort();

/** Another process that makes a spool in `root` (the built module, as a conversion does) and waits. */
async function ownerProcess(root: string): Promise<{ child: ChildProcess; dir: string }> {
  const code = `const m = await import(${JSON.stringify(DIST_MODULE)}); const { systemHost } = await import(${JSON.stringify(DIST_HOST)});
    const s = await m.makeSpoolDir(systemHost, ${JSON.stringify(root)}); process.stdout.write(s.dir + '\\n'); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const dir = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.once('exit', (c) => reject(new Error(`owner exited with ${c}`)));
  });
  return { child, dir };
}
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
const killed = (c: ChildProcess) =>
  new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : (c.once('exit', () => r()), c.kill('SIGKILL'))));

/** A directory that looks like an abandoned spool: `#owner` present, nobody holding it. */
function abandonedSpool(root: string, name: string): string {
  const d = path.join(root, `${SPOOL_PREFIX}${name}`);
  fs.mkdirSync(path.join(d, 'blobs'), { recursive: true });
  fs.writeFileSync(path.join(d, OWNER_FILE), '{"pid":1,"start":"0"}\n');
  fs.writeFileSync(path.join(d, 'blobs', 'x'), 'x');
  return d;
}

describe('archive spools', () => {
  it('a spool is a private directory locked by its process, recording the pid and start time; remove() is idempotent', async () => {
    const root = freshRoot();
    const sd = await makeSpoolDir(systemHost, root);
    expect(path.basename(sd.dir).startsWith(SPOOL_PREFIX)).toBe(true);
    expect(fs.statSync(sd.dir).mode & 0o777).toBe(0o700);
    expect(fs.readdirSync(sd.dir)).toEqual([OWNER_FILE]);
    expect(JSON.parse(fs.readFileSync(path.join(sd.dir, OWNER_FILE), 'utf8'))).toEqual({ pid: process.pid, start: processStart('self') });
    await sd.remove();
    await sd.remove();
    expect(spools(root)).toEqual([]);
  });

  it('the owner lock is taken through the host on the descriptor the spool keeps: a sweep finds it held until remove() closes it', async () => {
    const root = freshRoot();
    const host = new RecordingHost();
    const sd = await makeSpoolDir(host, root);
    const [taken] = host.ops('flock');
    expect(taken?.args[1]).toBe(LOCK_EX | LOCK_NB);
    const kept = taken!.args[0] as number;
    let r = await sweepWith(root, { host });
    expect(r).toEqual({ removed: [], kept: [{ path: sd.dir, why: 'its conversion is still running (its lock is held)' }] });
    // the sweep tried the lock on a descriptor of its own, never on the spool's
    expect(host.ops('flock').map((c) => c.args[0] !== kept)).toEqual([false, true]);
    await sd.remove();
    const stale = abandonedSpool(root, 'stale');
    r = await sweepWith(root, { host });
    expect(r.removed).toEqual([stale]);
  });

  it("a killed owner's spool is swept; a running owner's spool (another process, or this one) is not", async () => {
    const root = freshRoot();
    const mine = await makeSpoolDir(systemHost, root);
    const live = await ownerProcess(root);
    const dead = await ownerProcess(root);
    fs.writeFileSync(path.join(dead.dir, 'blob'), 'half-written');
    await killed(dead.child);
    const r = await sweepStaleSpools(root);
    expect(r.removed).toEqual([dead.dir]);
    expect(spools(root)).toEqual([path.basename(mine.dir), path.basename(live.dir)].sort());
    expect(r.kept.map((k) => k.why)).toEqual(['its conversion is still running (its lock is held)', 'its conversion is still running (its lock is held)']);
    // the lock goes with the process, however it ends
    await killed(live.child);
    expect((await sweepStaleSpools(root)).removed).toEqual([live.dir]);
    expect(spools(root)).toEqual([path.basename(mine.dir)]);
    await mine.remove();
  });

  it("the first spool of a process sweeps its root: what a killed conversion left goes, a running one's stays", async () => {
    const root = freshRoot();
    const live = await ownerProcess(root);
    const dead = await ownerProcess(root);
    await killed(dead.child);
    const sd = await makeSpoolDir(systemHost, root);
    expect(fs.existsSync(dead.dir)).toBe(false);
    expect(fs.existsSync(live.dir)).toBe(true);
    await sd.remove();
  });

  it('never follows a symbolic link and leaves alone what is not a directory of ours with a regular lock file of ours', async () => {
    const root = freshRoot();
    const elsewhere = freshRoot();
    const victim = abandonedSpool(elsewhere, 'victim');
    fs.symlinkSync(victim, path.join(root, `${SPOOL_PREFIX}link`));
    fs.writeFileSync(path.join(root, `${SPOOL_PREFIX}file`), 'not a directory');
    const linkOwner = abandonedSpool(root, 'linkowner');
    fs.rmSync(path.join(linkOwner, OWNER_FILE));
    fs.symlinkSync(path.join(victim, OWNER_FILE), path.join(linkOwner, OWNER_FILE));
    const dirOwner = abandonedSpool(root, 'dirowner');
    fs.rmSync(path.join(dirOwner, OWNER_FILE));
    fs.mkdirSync(path.join(dirOwner, OWNER_FILE));
    const stale = abandonedSpool(root, 'stale');
    const r = await sweepStaleSpools(root);
    expect(r.removed).toEqual([stale]);
    expect(Object.fromEntries(r.kept.map((k) => [path.basename(k.path).slice(SPOOL_PREFIX.length), k.why]))).toEqual({
      dirowner: `${OWNER_FILE} is not a regular file of this user`,
      file: 'not a directory',
      link: 'a symbolic link',
      linkowner: `${OWNER_FILE} cannot be opened (ELOOP)`,
    });
    expect(fs.readFileSync(path.join(victim, 'blobs', 'x'), 'utf8')).toBe('x');
    expect(spools(root)).toEqual([`${SPOOL_PREFIX}dirowner`, `${SPOOL_PREFIX}file`, `${SPOOL_PREFIX}link`, `${SPOOL_PREFIX}linkowner`]);
  });

  it.skipIf(needs({ root: 'chown to other uids' }))("leaves other users' spools alone, and spools whose lock file is another user's", async () => {
    const root = freshRoot();
    const theirs = abandonedSpool(root, 'theirs');
    fs.chownSync(theirs, 65534, 65534);
    const theirLock = abandonedSpool(root, 'theirlock');
    fs.chownSync(path.join(theirLock, OWNER_FILE), 65534, 65534);
    const r = await sweepStaleSpools(root);
    expect(r.removed).toEqual([]);
    expect(r.kept.map((k) => k.why)).toEqual([`${OWNER_FILE} is not a regular file of this user`, 'owned by uid 65534, not by this user']);
    expect(spools(root)).toHaveLength(2);
  });

  it('a spool without a lock file (an older cvmfs-thin, or one being created) goes only once it is a day old', async () => {
    const root = freshRoot();
    const young = path.join(root, `${SPOOL_PREFIX}young`);
    const old = path.join(root, `${SPOOL_PREFIX}old`);
    for (const d of [young, old]) fs.mkdirSync(path.join(d, 'blobs'), { recursive: true });
    const twoDaysAgo = new Date(Date.now() - 48 * 3600_000);
    fs.utimesSync(old, twoDaysAgo, twoDaysAgo);
    const r = await sweepStaleSpools(root);
    expect(r.removed).toEqual([old]);
    expect(r.kept).toEqual([{ path: young, why: `no ${OWNER_FILE}, and younger than 24 h (being created, or from an older cvmfs-thin)` }]);
  });

  it('does not sweep a temp dir that everyone may write into without the sticky bit; does with it', async () => {
    const root = freshRoot();
    const stale = abandonedSpool(root, 'stale');
    fs.chmodSync(root, 0o777);
    expect(await sweepStaleSpools(root)).toEqual({ removed: [], kept: [] });
    expect(fs.existsSync(stale)).toBe(true);
    fs.chmodSync(root, 0o1777);
    expect((await sweepStaleSpools(root)).removed).toEqual([stale]);
  });
});
