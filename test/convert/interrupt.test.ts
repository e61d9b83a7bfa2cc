/**
 * Interrupt safety: kill -9 in the middle of a layer, rerun, and the result is
 * complete and correct (no half layer ever at its final name, temporaries of
 * the dead converter removed). SIGINT stops cleanly, removing its temporaries.
 * An archive spool left in the temp dir by a killed conversion is removed by
 * the next run, never one of a conversion still running.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { layerDir, layerRootfs } from '../../src/core/cvmfs/layout.js';
import { CLI, needs, tempDir } from '../helpers/env.js';
import { json, runCli } from './cli.js';
import { applyLayersOracle, diffSnapshots, mountOverlay, snapshot } from './fixtures.js';
import { type BuiltLayer, buildLayer, writeLayout } from './images.js';
import { OWNER_FILE, SPOOL_PREFIX } from '../../src/convert/image/spool-dir.js';

interface Summary {
  images: { status: string; layers: { digest: string; status: string }[] }[];
}

function temps(repo: string): string[] {
  const out: string[] = [];
  const layers = path.join(repo, '.layers');
  if (!fs.existsSync(layers)) return out;
  for (const b of fs.readdirSync(layers)) {
    if (!/^[0-9a-f]{2}$/.test(b)) continue;
    for (const n of fs.readdirSync(path.join(layers, b))) if (n.startsWith('.tmp-')) out.push(n);
  }
  return out;
}

/** Start a conversion and send `signal` once `when()` holds; resolves with the exit code / signal. */
function convertAndInterrupt(
  args: string[],
  when: () => boolean,
  signal: NodeJS.Signals,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; fired: boolean; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    let fired = false;
    const t = setInterval(() => {
      if (!fired && when()) {
        fired = true;
        child.kill(signal);
      }
    }, 5);
    child.on('exit', (code, sig) => {
      clearInterval(t);
      resolve({ code, signal: sig, fired, stderr });
    });
  });
}

async function until<T>(what: string, f: () => T | undefined | false, timeoutMs = 60_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe.skipIf(needs({ binaries: ['tar', 'gzip'] }))('interrupted conversions', () => {
  const work = tempDir('cvmfs-thin-interrupt-');
  let layers: BuiltLayer[];
  let layout: string;

  beforeAll(() => {
    layers = [0, 1, 2].map((i) => {
      const st = path.join(work, `st${i}`);
      fs.mkdirSync(path.join(st, 'data', `l${i}`), { recursive: true });
      for (let f = 0; f < 6; f++) fs.writeFileSync(path.join(st, 'data', `l${i}`, `f${f}`), randomBytes(8 << 20));
      for (let f = 0; f < 300; f++) fs.writeFileSync(path.join(st, 'data', `l${i}`, `small${f}`), `${i}-${f}\n`);
      if (i === 1) fs.writeFileSync(path.join(st, 'data', '.wh.l0'), '');
      return buildLayer(st, 'gzip', path.join(work, 'blobs'), `l${i}`);
    });
    layout = path.join(work, 'layout');
    writeLayout(layout, 'big', [{ layers }]);
  });

  it.skipIf(needs({ root: 'overlay mounts', binaries: ['mount'] }))('kill -9 in the middle of a layer, then a rerun: complete and correct', async () => {
    const repo = path.join(work, 'repo');
    fs.mkdirSync(repo);
    const hex = layers.map((l) => l.digest.slice(7));
    const args = ['convert', `oci:${layout}:big`, '--repository-dir', repo, '--no-thin', '--jobs', '1', '--json'];
    // wait until layer 1 is committed and layer 2 is being written into its temporary directory
    const midLayer2 = () => {
      if (!fs.existsSync(layerDir(repo, hex[0]!))) return false;
      const bucket = path.join(repo, '.layers', hex[1]!.slice(0, 2));
      if (!fs.existsSync(bucket)) return false;
      return fs.readdirSync(bucket).some((n) => n.startsWith(`.tmp-${hex[1]}-`) && fs.existsSync(path.join(bucket, n, 'layerfs', 'data')));
    };
    const killed = await convertAndInterrupt(args, midLayer2, 'SIGKILL');
    expect(killed.fired).toBe(true);
    expect(killed.signal).toBe('SIGKILL');
    // what the killed run left: layer 1 complete, layer 2 only under a temporary name, no metadata
    expect(fs.existsSync(layerDir(repo, hex[0]!))).toBe(true);
    expect(fs.existsSync(layerDir(repo, hex[1]!))).toBe(false);
    expect(temps(repo).some((n) => n.startsWith(`.tmp-${hex[1]}-`))).toBe(true);
    expect(fs.existsSync(path.join(repo, '.metadata/localhost'))).toBe(false);

    const r = await runCli(args);
    expect(r.code, r.stderr).toBe(0);
    const s = json<Summary>(r);
    expect(s.images[0]!.layers.map((l) => l.status)).toEqual(['present', 'unpacked', 'unpacked']);
    expect(temps(repo)).toEqual([]);
    const oracleDir = path.join(work, 'oracle');
    applyLayersOracle(
      layers.map((l) => l.tar),
      oracleDir,
      work,
    );
    const mnt = path.join(work, 'mnt');
    const umount = mountOverlay(hex.map((h) => layerRootfs(repo, h)).reverse(), mnt);
    try {
      expect(diffSnapshots(snapshot(oracleDir), snapshot(mnt), ['oracle', 'overlay'])).toEqual([]);
    } finally {
      umount();
    }
  });

  it('SIGINT stops, removes its temporary directory, exits 130', async () => {
    const repo = path.join(work, 'repo-int');
    fs.mkdirSync(repo);
    const hex = layers[0]!.digest.slice(7);
    const bucket = path.join(repo, '.layers', hex.slice(0, 2));
    const r = await convertAndInterrupt(
      ['convert', `oci:${layout}:big`, '--repository-dir', repo, '--no-thin', '--jobs', '1'],
      () => fs.existsSync(bucket) && fs.readdirSync(bucket).some((n) => n.startsWith('.tmp-') && fs.existsSync(path.join(bucket, n, 'layerfs', 'data'))),
      'SIGINT',
    );
    expect(r.fired).toBe(true);
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toMatch(/SIGINT: stopping, cleaning up/);
    expect(temps(repo)).toEqual([]);
    expect(fs.existsSync(layerDir(repo, hex))).toBe(false);
  });

  it("an archive spool of a killed conversion is swept by the next run; a running conversion's is not", async () => {
    const tmp = path.join(work, 'tmp');
    fs.mkdirSync(tmp);
    const archive = path.join(work, 'big.tar');
    execFileSync('tar', ['-cf', archive, '-C', layout, '.']);
    const st = path.join(work, 'st-small');
    fs.mkdirSync(st);
    fs.writeFileSync(path.join(st, 'hello'), 'hello\n');
    const small = path.join(work, 'small-layout');
    writeLayout(small, 's', [{ layers: [buildLayer(st, 'gzip', path.join(work, 'blobs'), 'small')] }]);
    const smallArchive = path.join(work, 'small.tar');
    execFileSync('tar', ['-cf', smallArchive, '-C', small, '.']);
    const spools = () =>
      fs
        .readdirSync(tmp)
        .filter((n) => n.startsWith(SPOOL_PREFIX))
        .sort();
    const inUse = (n: string) => fs.existsSync(path.join(tmp, n, OWNER_FILE)) && fs.existsSync(path.join(tmp, n, 'blobs'));
    const conv = (repo: string, src: string) => {
      fs.mkdirSync(path.join(work, repo));
      return ['convert', src, '--repository-dir', path.join(work, repo), '--no-thin', '--jobs', '1', '--tmp-dir', tmp, '--json', '--log-level', 'info'];
    };

    // A: a conversion still running (held with SIGSTOP while its spool is in use)
    const a = spawn(process.execPath, [CLI, ...conv('repo-spool-a', `oci-archive:${archive}:big`)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let aErr = '';
    a.stdout.resume();
    a.stderr.on('data', (c: Buffer) => (aErr += c.toString()));
    const aExit = new Promise<number | null>((r) => a.once('exit', (c) => r(c)));
    try {
      const aSpool = await until("A's spool", () => spools().find(inUse));
      a.kill('SIGSTOP');

      // K: killed -9 while its archive is being spooled; its own start-up sweep left A's spool alone
      const k = await convertAndInterrupt(conv('repo-spool-k', `oci-archive:${archive}:big`), () => spools().some((n) => n !== aSpool && inUse(n)), 'SIGKILL');
      expect(k.fired).toBe(true);
      expect(k.signal).toBe('SIGKILL');
      const kSpool = spools().filter((n) => n !== aSpool);
      expect(kSpool).toHaveLength(1);
      expect(spools()).toContain(aSpool);

      // B: the next run removes K's spool, and not A's
      const b = await runCli(conv('repo-spool-b', `oci-archive:${smallArchive}:s`));
      expect(b.code, b.stderr).toBe(0);
      expect(json<Summary>(b).images[0]!.status).toBe('converted');
      expect(b.stderr).toContain(path.join(tmp, kSpool[0]!));
      expect(b.stderr).toMatch(/removed the archive spool of a conversion that no longer runs/);
      expect(spools()).toEqual([aSpool]);

      // A goes on: its spool was never touched, and it removes it when done
      a.kill('SIGCONT');
      expect(await aExit, aErr).toBe(0);
      expect(spools()).toEqual([]);
      for (const l of layers) expect(fs.existsSync(layerDir(path.join(work, 'repo-spool-a'), l.digest.slice(7)))).toBe(true);
    } finally {
      if (a.exitCode === null && a.signalCode === null) {
        a.kill('SIGCONT');
        a.kill('SIGKILL');
      }
    }
  });
});
