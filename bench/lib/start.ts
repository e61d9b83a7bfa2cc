/**
 * Shared pieces of the container-start benches (bench/thin-start.ts, bench/layer-count.ts):
 * commands that do not block the event loop, timing, a cleanup list run on exit and on
 * SIGINT/SIGTERM, `cvmfs-thin snapshotter` as a child process, a private containerd with it
 * ("a node"), `cvmfs-thin convert`, and one timed `ctr image import` + `ctr run --rm`.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { type Containerd, startContainerd } from '../../test/helpers/containerd.js';

/** Our CLI; BENCH_CLI runs another build's (e.g. an older checkout's bin/cvmfs-thin.js, for a before/after run). */
export const CLI = process.env['BENCH_CLI'] ?? path.resolve(import.meta.dirname, '../../bin/cvmfs-thin.js');
/** The proxy plugin's name in containerd's config. */
export const SN = 'cvmfs-snapshotter';
const execFileP = promisify(execFile);

/** Run a command without blocking the event loop (a Stratum-0's HTTP server may live in this process). */
export async function sh(cmd: string, args: string[], timeout = 600_000): Promise<string> {
  try {
    return (await execFileP(cmd, args, { encoding: 'utf8', timeout, maxBuffer: 64 << 20 })).stdout;
  } catch (e) {
    const x = e as { code?: number; stderr?: string; stdout?: string };
    throw new Error(`${cmd} ${args.join(' ')}: exit ${x.code}\n${x.stderr ?? ''}${x.stdout ?? ''}`);
  }
}

export async function timed<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t0 = process.hrtime.bigint();
  const r = await f();
  return [Number(process.hrtime.bigint() - t0) / 1e9, r];
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export function have(bin: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** What is missing of root, these binaries and /bin/busybox (busybox-static, the images' shell). */
export const missingOf = (bins: string[]): string[] => [
  ...(process.getuid?.() === 0 ? [] : ['root']),
  ...bins.filter((b) => !have(b)),
  ...(fs.existsSync('/bin/busybox') ? [] : ['/bin/busybox (busybox-static)']),
];

/** Exit 1 with a hint when dist/ has not been built. */
export function requireBuild(bench: string): void {
  if (fs.existsSync(path.resolve(import.meta.dirname, '../../dist/cli/main.js'))) return;
  process.stderr.write(`${bench}: dist/ is missing; run \`npm run build\` first\n`);
  process.exit(1);
}

// ---- cleanup --------------------------------------------------------------------------------

const cleanups: (() => Promise<unknown> | unknown)[] = [];
let cleaning: Promise<void> | undefined;
/** Register an undo step; `cleanup()` runs them last-registered first, once. */
export const onCleanup = (f: () => Promise<unknown> | unknown) => void cleanups.push(f);
export const cleanup = (log: (s: string) => void = () => {}) =>
  (cleaning ??= (async () => {
    for (const f of cleanups.reverse())
      await Promise.resolve()
        .then(f)
        .catch((e: unknown) => log(`cleanup: ${(e as Error).message}`));
  })());
export function cleanupOnSignals(log: (s: string) => void): void {
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => {
      log(`${sig}: cleaning up`);
      void cleanup(log).then(() => process.exit(130));
    });
}

// ---- daemons --------------------------------------------------------------------------------

export interface Snapshotter {
  socket: string;
  /** its --root */
  root: string;
  stop: () => Promise<void>;
  /** its stderr: all of it with `keepLog`, else the last 64 kB */
  log: () => string;
}

export async function startSnapshotter(
  dir: string,
  opts: { repository: string; mountpoint: string; logLevel?: string; keepLog?: boolean; args?: string[] },
): Promise<Snapshotter> {
  const socket = path.join(dir, 'sn.sock');
  const args = [
    CLI,
    'snapshotter',
    '--root',
    path.join(dir, 'sn'),
    '--address',
    socket,
    '--repository',
    opts.repository,
    '--absolute-mountpoint',
    opts.mountpoint,
    '--log-level',
    opts.logLevel ?? 'info',
    ...(opts.args ?? []),
  ];
  const proc: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let out = '';
  proc.stderr!.on('data', (d: Buffer) => (out = opts.keepLog ? out + d.toString() : (out + d.toString()).slice(-64_000)));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  onCleanup(stop);
  const t0 = Date.now();
  while (!fs.existsSync(socket) || !out.includes('snapshotter serving')) {
    if (proc.exitCode !== null) throw new Error(`snapshotter exited with ${proc.exitCode}:\n${out}`);
    if (Date.now() - t0 > 30_000) throw new Error(`snapshotter did not start:\n${out}`);
    await sleep(50);
  }
  return { socket, root: path.join(dir, 'sn'), stop, log: () => out };
}

/** Unmount whatever is still mounted below `dir` (containerd's overlays, the snapshotter's binds), deepest first. */
export async function unmountBelow(dir: string): Promise<void> {
  const ms = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
  for (const m of ms.sort().reverse()) await sh('umount', ['-l', m]).catch(() => undefined);
}

export interface Node {
  sn: Snapshotter;
  ctd: Containerd;
  /** stop containerd and the snapshotter, unmount what is left below the directory, remove it */
  stop: () => Promise<void>;
}

/** A fresh "node": `cvmfs-thin snapshotter` and a private containerd using it, both with empty roots under `dir`. */
export async function startNode(dir: string, opts: Parameters<typeof startSnapshotter>[1]): Promise<Node> {
  fs.mkdirSync(dir, { recursive: true });
  const sn = await startSnapshotter(dir, opts);
  const ctd = await startContainerd(path.join(dir, 'ctd'), sn.socket, SN);
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (ctd.proc.exitCode === null && ctd.proc.signalCode === null) await ctd.stop();
      await sn.stop();
      await unmountBelow(dir);
      fs.rmSync(dir, { recursive: true, force: true });
    })());
  onCleanup(stop);
  return { sn, ctd, stop };
}

// ---- images ---------------------------------------------------------------------------------

/** `cvmfs-thin convert` of `source` into `repositoryDir` (`extra`: e.g. --cvmfs-server); the thin image's archive and name. */
export async function convert(
  source: string,
  o: { repositoryDir: string; repository: string; thinTar: string; lockFile: string; extra?: string[] },
): Promise<{ seconds: number; thinName: string }> {
  const args = [
    CLI,
    'convert',
    source,
    '--repository-dir',
    o.repositoryDir,
    '--repository',
    o.repository,
    ...(o.extra ?? []),
    '--thin',
    `oci-archive:${o.thinTar}`,
    '--lock-file',
    o.lockFile,
    '--quiet',
  ];
  const [seconds] = await timed(() => sh(process.execPath, args, 3_600_000));
  return { seconds, thinName: imageNameOf(o.thinTar) };
}

/** The image name (io.containerd.image.name) in an OCI archive's index.json. */
export const imageNameOf = (archive: string): string =>
  (JSON.parse(execFileSync('tar', ['-xOf', archive, 'index.json'], { encoding: 'utf8' })) as { manifests: { annotations: Record<string, string> }[] })
    .manifests[0]!.annotations['io.containerd.image.name']!;

export interface Sample {
  import: number;
  run: number;
  total: number;
  bytes?: number;
  requests?: number;
}

/** `sync`, then timed `ctr image import` and `ctr run --rm` of `cmd` (import skipped when `archive` is undefined: the image is there). */
export async function pullRun(
  ctd: Containerd,
  archive: string | undefined,
  image: string,
  id: string,
  cmd: string[],
  snapshotter?: string,
): Promise<{ s: Sample; out: string }> {
  const sn = snapshotter ? ['--snapshotter', snapshotter] : [];
  await sh('sync', []);
  const [imp] = archive ? await timed(() => ctd.ctr(['image', 'import', ...sn, archive], { timeoutMs: 600_000 })) : [0];
  const [run, out] = await timed(() => ctd.ctr(['run', '--rm', ...sn, image, id, ...cmd], { timeoutMs: 600_000 }));
  return { s: { import: imp, run, total: imp + run }, out };
}
