/**
 * `cvmfs-thin doctor`: checks a node and says what to fix. Every check reads
 * (files, /proc, /sys, the mount table, sockets, `dockerd --version`); nothing
 * is changed. Host access goes through the Host seam, file locations are
 * options, so tests run on copies.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Host } from '../core/host/host.js';
import { silentLogger } from '../core/telemetry/log.js';
import { CvmfsProbe } from '../core/host/probe.js';
import { cvmfsClientChecks, cvmfsMountChecks } from './doctor-cvmfs.js';
import { publishedRepositories, SERVER_CONF_DIR, serverConfFile, xattrWarning } from '../core/cvmfs/server-conf.js';
import { inspectContainerdConfig } from './containerd-config.js';
import { inspectDaemonJson } from './daemon-json.js';
import { PLUGIN_DIR, SNAPSHOTTER_ADDRESS } from './setup.js';
import { DAEMONS } from './templates.js';
import { parseTomlFile } from './toml-edit.js';

export type Status = 'pass' | 'warn' | 'fail' | 'skip';

export interface Check {
  id: string;
  status: Status;
  /** what was found */
  detail: string;
  /** what to do about it (warn/fail) */
  fix?: string;
}

export interface DoctorOptions {
  host: Host;
  containerdConfig: string;
  daemonJson: string;
  snapshotterConfig: string;
  graphdriverConfig: string;
  volumePluginConfig: string;
  systemdDir: string;
  /** override the config files' / defaults' CVMFS location */
  cvmfsRoot?: string | undefined;
  repository?: string | undefined;
  /** /proc/filesystems and /sys/module/overlay/parameters (tests) */
  procFilesystems?: string;
  overlayParameters?: string;
  kernelRelease?: string;
  timeoutMs?: number;
  /** State directories whose containers are checked (default: the config files' `root` / `state-dir`, else the daemons' defaults). */
  snapshotterRoot?: string | undefined;
  graphdriverStateDir?: string | undefined;
  /** The CVMFS client's programs and the environment they are found in (tests: fakes on PATH). */
  cvmfsConfig?: string | undefined;
  cvmfsTalk?: string | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  /** A Stratum-0's repository configurations (default /etc/cvmfs/repositories.d). */
  cvmfsServerConfDir?: string | undefined;
}

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

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** A string key of a daemon's TOML config (missing or unreadable file: undefined). */
function tomlKey(file: string, key: string): string | undefined {
  const t = readText(file);
  if (t === null) return undefined;
  try {
    const v = parseTomlFile(t, file)[key];
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

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

const param = (dir: string, name: string) => readText(path.join(dir, name))?.trim();

function overlayChecks(o: DoctorOptions): Check[] {
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

/** The string-list key of a daemon's TOML config. */
function tomlList(file: string, key: string): string[] {
  const t = readText(file);
  if (t === null) return [];
  try {
    const v = parseTomlFile(t, file)[key];
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
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

interface Use {
  checks: Check[];
  /** sockets that must be alive: [socket, kind, what, unit] */
  sockets: [string, 'grpc' | 'plugin', string, string][];
  used: boolean;
}

function containerdUse(o: DoctorOptions, address: string): Use & { names: string[] } {
  const text = readText(o.containerdConfig);
  if (text === null) return { checks: [{ id: 'containerd-config', status: 'skip', detail: `no ${o.containerdConfig}` }], sockets: [], used: false, names: [] };
  let info: ReturnType<typeof inspectContainerdConfig>;
  try {
    info = inspectContainerdConfig(text, o.containerdConfig);
  } catch (e) {
    return {
      checks: [{ id: 'containerd-config', status: 'fail', detail: (e as Error).message, fix: `fix ${o.containerdConfig}` }],
      sockets: [],
      used: false,
      names: [],
    };
  }
  const names = Object.entries(info.proxies)
    .filter(([, a]) => a === address)
    .map(([n]) => n);
  if (names.length === 0) {
    const other = Object.keys(info.proxies);
    return {
      checks: [
        {
          id: 'containerd-config',
          status: 'skip',
          detail: `containerd has no proxy plugin on ${address}${other.length ? ` (proxy plugins: ${other.join(', ')})` : ''}`,
          fix: 'cvmfs-thin setup containerd',
        },
      ],
      sockets: [],
      used: false,
      names,
    };
  }
  const cri =
    info.criSnapshotter && names.includes(info.criSnapshotter)
      ? `; Kubernetes (CRI) pulls use it, snapshot annotations ${info.annotations ? 'on' : 'OFF (remote layers need disable_snapshot_annotations = false)'}`
      : '';
  return {
    checks: [
      {
        id: 'containerd-config',
        status: cri && !info.annotations ? 'warn' : 'pass',
        detail: `version ${info.version}: proxy_plugins.${names.join(', ')} → ${address}${cri}`,
        ...(cri && !info.annotations ? { fix: 'cvmfs-thin setup containerd --kubernetes' } : {}),
      },
    ],
    sockets: [[address, 'grpc', 'snapshotter', DAEMONS.snapshotter.unit]],
    used: true,
    names,
  };
}

async function dockerUse(o: DoctorOptions, ctdNames: string[]): Promise<Use> {
  const checks: Check[] = [];
  const r = await o.host.exec('dockerd', ['--version'], { timeoutMs: 10_000 });
  const m = /(\d+)\.(\d+)/.exec(r.stdout);
  const version = r.code === 0 && m ? ([Number(m[1]), Number(m[2])] as const) : undefined;
  const text = readText(o.daemonJson);
  let d: ReturnType<typeof inspectDaemonJson> | undefined;
  if (text !== null) {
    try {
      d = inspectDaemonJson(text, o.daemonJson);
    } catch (e) {
      checks.push({ id: 'docker-config', status: 'fail', detail: (e as Error).message, fix: `fix ${o.daemonJson}` });
    }
  } else checks.push({ id: 'docker-config', status: 'skip', detail: `no ${o.daemonJson}` });
  const gdSocket = tomlKey(o.graphdriverConfig, 'socket') ?? `${PLUGIN_DIR}/cvmfs.sock`;
  const gdName = path.basename(gdSocket, '.sock');
  const sockets: Use['sockets'] = [];
  let mode: 'graphdriver' | 'containerd-store' | undefined;
  if (d?.containerdStore && d.driver && ctdNames.includes(d.driver)) {
    mode = 'containerd-store';
    checks.push({ id: 'docker-config', status: 'pass', detail: `containerd image store with snapshotter ${d.driver}` });
  } else if (d && d.driver === gdName && !d.containerdStore) {
    mode = 'graphdriver';
    if (!d.experimental)
      checks.push({
        id: 'docker-config',
        status: 'fail',
        detail: `storage-driver ${gdName} without "experimental": true: dockerd refuses graph driver plugins`,
        fix: `cvmfs-thin setup docker`,
      });
    else checks.push({ id: 'docker-config', status: 'pass', detail: `graph driver ${gdName} (${gdSocket}), experimental` });
    sockets.push([gdSocket, 'plugin', 'graph driver', DAEMONS.graphdriver.unit]);
  } else if (d)
    checks.push({
      id: 'docker-config',
      status: 'skip',
      detail: `dockerd's storage driver is ${d.driver ?? 'its default'}${d.containerdStore ? ' (containerd image store)' : ''}: not cvmfs-thin`,
      fix: 'cvmfs-thin setup docker',
    });
  if (!version) checks.push({ id: 'docker-version', status: 'skip', detail: 'dockerd not found' });
  else {
    const [maj, min] = version;
    const v = `${maj}.${min}`;
    const old = maj < 20 || (maj === 20 && min < 10);
    if (mode === 'graphdriver') {
      if (old || maj >= 28)
        checks.push({
          id: 'docker-version',
          status: 'fail',
          detail: `Docker ${v} ${old ? 'is older than 20.10' : 'has no graph driver plugins (removed in 28)'}`,
          fix: old ? 'upgrade Docker' : 'cvmfs-thin setup docker --mode containerd-store',
        });
      else if (maj === 27) {
        const dropins = path.join(o.systemdDir, 'docker.service.d');
        const has =
          existsSync(dropins) &&
          readdirSync(dropins).some((f) => f.endsWith('.conf') && (readText(path.join(dropins, f)) ?? '').includes('DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS'));
        checks.push(
          has
            ? { id: 'docker-version', status: 'pass', detail: `Docker ${v}: graph driver plugins enabled by DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS` }
            : {
                id: 'docker-version',
                status: 'fail',
                detail: `Docker ${v} loads graph driver plugins only with DOCKERD_DEPRECATED_GRAPHDRIVER_PLUGINS=1`,
                fix: 'cvmfs-thin setup docker (adds a docker.service drop-in)',
              },
        );
      } else checks.push({ id: 'docker-version', status: 'pass', detail: `Docker ${v} supports graph driver plugins (with experimental)` });
    } else if (mode === 'containerd-store' && maj < 24)
      checks.push({
        id: 'docker-version',
        status: 'fail',
        detail: `Docker ${v} has no containerd image store (24 or later)`,
        fix: 'upgrade Docker, or cvmfs-thin setup docker --mode graphdriver',
      });
    else
      checks.push({
        id: 'docker-version',
        status: old ? 'warn' : 'pass',
        detail: `Docker ${v}: ${old ? 'too old for cvmfs-thin' : maj >= 28 ? 'containerd image store only' : maj >= 24 ? 'graph driver or containerd image store' : 'graph driver'}`,
      });
  }
  return { checks, sockets, used: mode !== undefined };
}

function idmapCheck(o: DoctorOptions): Check {
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
