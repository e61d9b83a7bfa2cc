/**
 * A private podman for tests: its own graphroot/runroot/tmp dir, storage.conf,
 * containers.conf and registries.conf in a temp directory (nothing touches the
 * machine's default store), runc with cgroupfs, no network, small ulimits (the
 * CI VM's hard limits are below podman's defaults). Kernel overlay, or
 * fuse-overlayfs as overlay's mount program.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface Podman {
  dir: string;
  env: NodeJS.ProcessEnv;
  run(args: string[], opts?: { allowFail?: boolean; timeoutMs?: number }): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Remove containers, unmount, delete the directory. */
  destroy(): Promise<void>;
}

export function makePodman(dir: string, o: { stores?: string[]; fuse?: boolean; insecureRegistries?: string[] } = {}): Podman {
  fs.mkdirSync(dir, { recursive: true });
  const storage = [
    '[storage]',
    'driver = "overlay"',
    `graphroot = ${JSON.stringify(path.join(dir, 'root'))}`,
    `runroot = ${JSON.stringify(path.join(dir, 'runroot'))}`,
    '[storage.options]',
    `additionalimagestores = [${(o.stores ?? []).map((s) => JSON.stringify(s)).join(', ')}]`,
    ...(o.fuse ? ['[storage.options.overlay]', 'mount_program = "/usr/bin/fuse-overlayfs"'] : []),
  ];
  fs.writeFileSync(path.join(dir, 'storage.conf'), `${storage.join('\n')}\n`);
  const containers = [
    '[engine]',
    'cgroup_manager = "cgroupfs"',
    'events_logger = "file"',
    `events_logfile_path = ${JSON.stringify(path.join(dir, 'events.log'))}`,
    'runtime = "runc"',
    `tmp_dir = ${JSON.stringify(path.join(dir, 'tmp'))}`,
    `static_dir = ${JSON.stringify(path.join(dir, 'root', 'libpod'))}`,
    `volume_path = ${JSON.stringify(path.join(dir, 'root', 'volumes'))}`,
    '[containers]',
    'netns = "none"',
    'log_driver = "k8s-file"',
    'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
  ];
  fs.writeFileSync(path.join(dir, 'containers.conf'), `${containers.join('\n')}\n`);
  const registries = ['unqualified-search-registries = []', 'short-name-mode = "disabled"'];
  for (const r of o.insecureRegistries ?? []) registries.push('[[registry]]', `location = ${JSON.stringify(r)}`, 'insecure = true');
  fs.writeFileSync(path.join(dir, 'registries.conf'), `${registries.join('\n')}\n`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CONTAINERS_STORAGE_CONF: path.join(dir, 'storage.conf'),
    CONTAINERS_CONF: path.join(dir, 'containers.conf'),
    CONTAINERS_REGISTRIES_CONF: path.join(dir, 'registries.conf'),
  };
  const run: Podman['run'] = (args, ro = {}) =>
    new Promise((resolve, reject) => {
      const t0 = Date.now();
      execFile('podman', args, { env, timeout: ro.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (Date.now() - t0 > 5000) process.stderr.write(`[podman slow] ${Date.now() - t0} ms: podman ${args.join(' ')}\n${stderr.slice(-2000)}\n`);
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as unknown as { code: number }).code : 1) : 0;
        if (code !== 0 && !ro.allowFail) reject(new Error(`podman ${args.join(' ')} failed (${code}): ${stderr}`));
        else resolve({ code, stdout, stderr });
      });
    });
  return {
    dir,
    env,
    run,
    async destroy() {
      await run(['rm', '--all', '--force'], { allowFail: true });
      await run(['umount', '--all', '--force'], { allowFail: true });
      // anything still mounted below the directory (fuse-overlayfs, overlay)
      const mounts = fs
        .readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[4] ?? '')
        .filter((m) => m.startsWith(`${dir}/`));
      for (const m of mounts.sort((a, b) => b.length - a.length)) {
        await new Promise<void>((r) => execFile('umount', ['-l', m], () => r()));
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

let runs = 0;
/**
 * Run `sh -c script` in a container of `image` (never pulled) and return its
 * output; the container must exit 0 (and is removed, unless `keep` names it). Detached + poll + logs + rm, not
 * `podman wait`: podman 4.3 counts conmon as alive while it is an unreaped
 * zombie (here: reparented to a PID 1 that reaps late) and then waits out its
 * 20 s cleanup timeout; `inspect` reads conmon's exit file, so it sees the exit at once.
 */
export async function sh(p: Podman, image: string, script: string, o: { keep?: string } = {}): Promise<string> {
  const ctr = o.keep ?? `cvmfs-thin-podman-${process.pid}-${runs++}`;
  await p.run(['run', '-d', '--name', ctr, '--pull', 'never', '--network', 'none', image, 'sh', '-c', script]);
  try {
    let state = '';
    for (let i = 0; i < 600; i++) {
      state = (await p.run(['inspect', '--format', '{{.State.Status}} {{.State.ExitCode}}', ctr])).stdout.trim();
      if (!state.startsWith('running') && !state.startsWith('created') && !state.startsWith('configured')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    // `stopped`: exited, podman's cleanup not yet run (see above); the exit code is conmon's
    if (!/^(exited|stopped) 0$/.test(state))
      throw new Error(`container of ${image} ended ${JSON.stringify(state)}: ${(await p.run(['logs', ctr], { allowFail: true })).stdout}`);
    return (await p.run(['logs', ctr])).stdout;
  } finally {
    if (o.keep === undefined) await p.run(['rm', '-f', ctr]);
  }
}
