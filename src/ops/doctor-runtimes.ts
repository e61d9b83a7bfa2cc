/**
 * `cvmfs-thin doctor`, the image runtimes: is containerd configured with our
 * proxy snapshotter (and CRI's snapshot annotations), is dockerd configured
 * with our graph driver or the containerd image store, and does its version
 * support that; and which of our daemons' sockets must then answer.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { inspectContainerdConfig } from './containerd-config.js';
import { inspectDaemonJson } from './daemon-json.js';
import { type Check, type DoctorOptions, readText, tomlKey } from './doctor-check.js';
import { PLUGIN_DIR } from './setup.js';
import { DAEMONS } from './templates.js';

interface Use {
  checks: Check[];
  /** sockets that must be alive: [socket, kind, what, unit] */
  sockets: [string, 'grpc' | 'plugin', string, string][];
  used: boolean;
}

export function containerdUse(o: DoctorOptions, address: string): Use & { names: string[] } {
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

export async function dockerUse(o: DoctorOptions, ctdNames: string[]): Promise<Use> {
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
