/**
 * `cvmfs-thin doctor`: checks a node and says what to fix. Every check reads
 * (files, /proc, /sys, the mount table, sockets, `dockerd --version`); nothing
 * is changed. Host access goes through the Host seam, file locations are
 * options, so tests run on copies. This file runs the checks in order (kernel:
 * doctor-kernel.ts; CVMFS: here and doctor-cvmfs.ts; image runtimes:
 * doctor-runtimes.ts), probes the daemons' sockets and formats the report.
 */
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { silentLogger } from '../core/telemetry/log.js';
import { CvmfsProbe } from '../core/host/probe.js';
import { cvmfsClientChecks, cvmfsMountChecks } from './doctor-cvmfs.js';
import { publishedRepositories, SERVER_CONF_DIR, serverConfFile, xattrWarning } from '../core/cvmfs/server-conf.js';
import { type Check, type DoctorOptions, type Status, tomlKey, tomlList } from './doctor-check.js';
import { idmapCheck, overlayChecks } from './doctor-kernel.js';
import { containerdUse, dockerUse } from './doctor-runtimes.js';
import { PLUGIN_DIR, SNAPSHOTTER_ADDRESS } from './setup.js';
import { DAEMONS } from './templates.js';

export type { Check, DoctorOptions } from './doctor-check.js';

/** On a publisher: repositories whose publishes drop xattrs (converted images then need local copies on every node). */
function publisherChecks(confDir = SERVER_CONF_DIR): Check[] {
  const repos = publishedRepositories(confDir);
  if (repos.length === 0) return [];
  const warn = repos.filter((r) => xattrWarning(r, confDir) !== null);
  if (warn.length === 0) return [{ id: 'cvmfs-publisher', status: 'pass', detail: `this host publishes ${repos.join(', ')}, with xattrs` }];
  return warn.map((r) => ({
    id: 'cvmfs-publisher',
    status: 'warn' as const,
    detail: xattrWarning(r, confDir)!,
    fix: `add CVMFS_INCLUDE_XATTRS=true to ${serverConfFile(r, confDir)}`,
  }));
}

/** The daemons' default state directories (src/cli/snapshotter.ts, src/cli/graphdriver.ts). */
const SNAPSHOTTER_ROOT = '/var/lib/containerd-cvmfs-grpc';
const GRAPHDRIVER_STATE_DIR = '/var/lib/cvmfs-thin/graphdriver';

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
    t.unref();
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e as Error)),
    );
  });
}

/** Does something accept connections on this unix socket? HTTP plugins also answer Plugin.Activate. */
async function probeSocket(socket: string, kind: 'grpc' | 'plugin', ms: number): Promise<string | null> {
  if (!existsSync(socket)) return 'no socket';
  if (kind === 'grpc') {
    return withTimeout(
      new Promise<string | null>((resolve) => {
        const s = net.connect(socket);
        s.once('connect', () => (s.destroy(), resolve(null)));
        s.once('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? e.message));
      }),
      ms,
      socket,
    ).catch((e: unknown) => (e as Error).message);
  }
  return withTimeout(
    new Promise<string | null>((resolve) => {
      const req = http.request(
        {
          socketPath: socket,
          method: 'POST',
          path: '/Plugin.Activate',
          headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': 0 },
          agent: false,
        },
        (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve(res.statusCode === 200 && body.includes('Implements') ? null : `Plugin.Activate answered ${res.statusCode}`));
        },
      );
      req.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? e.message));
      req.end();
    }),
    ms,
    socket,
  ).catch((e: unknown) => (e as Error).message);
}

/** The graph driver's Home, from the Init it remembered. */
function graphdriverHome(stateDir: string): string | undefined {
  try {
    const s = JSON.parse(readFileSync(path.join(stateDir, 'driver.json'), 'utf8')) as { home?: unknown };
    return typeof s.home === 'string' ? s.home : undefined;
  } catch {
    return undefined;
  }
}

async function cvmfsChecks(o: DoctorOptions, probe: CvmfsProbe): Promise<Check[]> {
  const cfgRoot = tomlKey(o.snapshotterConfig, 'cvmfs-root') ?? tomlKey(o.graphdriverConfig, 'cvmfs-root');
  const root = path.resolve(o.cvmfsRoot ?? cfgRoot ?? '/cvmfs');
  const repo = o.repository ?? tomlKey(o.snapshotterConfig, 'repository') ?? tomlKey(o.graphdriverConfig, 'repository') ?? 'unpacked.cern.ch';
  const mp = o.cvmfsRoot || o.repository ? path.join(root, repo) : (tomlKey(o.snapshotterConfig, 'absolute-mountpoint') ?? path.join(root, repo));
  const ms = o.timeoutMs ?? 10_000;
  const out: Check[] = [];
  const mounts = o.host.mountinfo();
  const at = mounts.filter((m) => m.mountPoint === root);
  const below = mounts.filter((m) => m.mountPoint.startsWith(`${root}/`) && /fuse|cvmfs/.test(`${m.fsType} ${m.source}`));
  if (!existsSync(root)) {
    out.push({
      id: 'cvmfs-root',
      status: 'fail',
      detail: `${root} does not exist`,
      fix: 'install the CVMFS client and run cvmfs_config setup (autofs mounts /cvmfs/<repository> on access), or mount the repositories there; or pass --cvmfs-root',
    });
  } else if (at.some((m) => m.fsType === 'autofs')) {
    out.push({
      id: 'cvmfs-root',
      status: 'pass',
      detail: `${root} is automounted (autofs)${below.length ? `; mounted now: ${below.map((m) => path.basename(m.mountPoint)).join(', ')}` : ''}`,
    });
  } else if (below.length > 0 || at.some((m) => /fuse|cvmfs/.test(`${m.fsType} ${m.source}`))) {
    out.push({ id: 'cvmfs-root', status: 'pass', detail: `${root} has CVMFS mounts: ${[...at, ...below].map((m) => m.mountPoint).join(', ')}` });
  } else {
    out.push({
      id: 'cvmfs-root',
      status: 'warn',
      detail: `${root} exists but nothing is mounted there (a plain directory: a stand-in, or CVMFS not set up)`,
      fix: 'cvmfs_config setup (autofs) or mount the repositories; ignore for a local stand-in tree',
    });
  }
  // asked in the probe helper: a stalled CVMFS answers nothing, and must not hang the doctor
  // (statfs first: the kernel answers a stat from its cache even for a dead or stalled client)
  const layers = path.join(mp, '.layers');
  const a = await probe.answer(mp, { op: 'stat', path: layers }, 'doctor', { op: 'statfs', path: mp });
  if (a !== 'stalled' && a.ok && a.dir) out.push({ id: 'repository', status: 'pass', detail: `${repo} reachable at ${mp}, holding .layers` });
  else {
    const why =
      a === 'stalled'
        ? `${layers}: no answer within ${ms / 1000} s (the CVMFS client stalls)`
        : a.ok
          ? `${layers} is not a directory`
          : a.code === 'ENOENT'
            ? existsSync(mp)
              ? `${mp} has no .layers directory`
              : `${mp} does not exist`
            : a.code === 'ENOTCONN'
              ? `${mp} answers ENOTCONN (its CVMFS client died)`
              : a.message;
    out.push({
      id: 'repository',
      status: 'fail',
      detail: `${repo}: ${why}`,
      fix: `make ${repo} available at ${mp} (the repository with DUCC's .layers/<xx>/<digest>/layerfs), or set repository / absolute-mountpoint (--repository, --cvmfs-root)`,
    });
  }
  const allowed = [...tomlList(o.snapshotterConfig, 'allowed-repositories'), ...tomlList(o.graphdriverConfig, 'allowed-repositories')];
  const mounted = o.host
    .mountinfo()
    .filter((m) => m.source === 'cvmfs2' && path.dirname(m.mountPoint) === root)
    .map((m) => path.basename(m.mountPoint));
  const stateDir = o.graphdriverStateDir ?? tomlKey(o.graphdriverConfig, 'state-dir') ?? GRAPHDRIVER_STATE_DIR;
  const home = graphdriverHome(stateDir);
  const co = {
    host: o.host,
    probe,
    cvmfsRoot: root,
    repositories: [...new Set([repo, ...allowed, ...mounted])].slice(0, 16),
    stateRoots: [o.snapshotterRoot ?? tomlKey(o.snapshotterConfig, 'root') ?? SNAPSHOTTER_ROOT, ...(home ? [home] : [])].map((r) => path.resolve(r)),
    timeoutMs: ms,
    cvmfsConfig: o.cvmfsConfig,
    cvmfsTalk: o.cvmfsTalk,
    env: o.env,
  };
  out.push(...(await cvmfsMountChecks(co)), ...(await cvmfsClientChecks(co)), ...publisherChecks(o.cvmfsServerConfDir));
  return out;
}

/** Run every check. */
export async function runDoctor(o: DoctorOptions): Promise<Check[]> {
  const probe = new CvmfsProbe({ host: o.host, log: silentLogger(), timeoutMs: o.timeoutMs ?? 10_000 });
  const checks: Check[] = [...overlayChecks(o), ...(await cvmfsChecks(o, probe))];
  const address = tomlKey(o.snapshotterConfig, 'address') ?? SNAPSHOTTER_ADDRESS;
  const ctd = containerdUse(o, address);
  const dkr = await dockerUse(o, ctd.names);
  checks.push(...ctd.checks, ...dkr.checks);
  if (!ctd.used && !dkr.used) {
    // a node with only the volume plugin needs no image runtime
    const volumesOnly = existsSync(path.join(o.systemdDir, DAEMONS['volume-plugin'].unit));
    checks.push({
      id: 'runtime',
      status: volumesOnly ? 'warn' : 'fail',
      detail: `neither containerd nor dockerd is configured to use cvmfs-thin${volumesOnly ? ' (only the volume plugin is installed)' : ''}`,
      fix: 'cvmfs-thin setup containerd [--kubernetes], or cvmfs-thin setup docker',
    });
  }
  const sockets = [...ctd.sockets, ...dkr.sockets];
  const volSocket = tomlKey(o.volumePluginConfig, 'socket') ?? `${PLUGIN_DIR}/cvmfs.sock`;
  if (existsSync(path.join(o.systemdDir, DAEMONS['volume-plugin'].unit)) && !sockets.some((s) => s[0] === volSocket))
    sockets.push([volSocket, 'plugin', 'volume plugin', DAEMONS['volume-plugin'].unit]);
  for (const [socket, kind, what, unit] of sockets) {
    const err = await probeSocket(socket, kind, o.timeoutMs ?? 10_000);
    checks.push(
      err === null
        ? { id: 'socket', status: 'pass', detail: `${what} answers on ${socket}` }
        : {
            id: 'socket',
            status: 'fail',
            detail: `${what} not answering on ${socket}: ${err}`,
            fix: `systemctl start ${unit} (journalctl -u ${unit} for why it stopped)`,
          },
    );
  }
  checks.push(idmapCheck(o));
  return checks;
}

const MARK: Record<Status, string> = { pass: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: '-   ' };

export function formatChecks(checks: readonly Check[]): string {
  const lines = checks.map(
    (c) => `${MARK[c.status]} ${c.id}: ${c.detail}${c.fix && (c.status === 'warn' || c.status === 'fail') ? `\n       fix: ${c.fix}` : ''}`,
  );
  const fails = checks.filter((c) => c.status === 'fail').length;
  const warns = checks.filter((c) => c.status === 'warn').length;
  lines.push(fails ? `${fails} check(s) failed${warns ? `, ${warns} warning(s)` : ''}` : `all checks passed${warns ? ` (${warns} warning(s))` : ''}`);
  return `${lines.join('\n')}\n`;
}
