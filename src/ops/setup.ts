/**
 * `cvmfs-thin setup containerd|docker|volumes`: what a node label
 * (`cvmfs_storage_driver=true`, `cvmfs_enabled=true`) does to a node — the
 * runtime's configuration, our daemons' configuration files and systemd units,
 * then systemctl. Planning reads files only; applying goes through the
 * manifest in files.ts; systemctl goes through the Host seam.
 */
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../core/errors/errors.js';
import type { Host } from '../core/host/host.js';
import { editContainerdConfig } from './containerd-config.js';
import { type DockerMode, editDaemonJson } from './daemon-json.js';
import { changed, changeDiff, type FileChange, readIfExists, SetupState, type Target } from './files.js';
import { configTemplate, DAEMONS, type Daemon, DOCKER27_DROPIN, DOCKER27_DROPIN_NAME, renderUnit } from './templates.js';
import { editToml, isTable, parseTomlFile } from './toml-edit.js';

export const SNAPSHOTTER_ADDRESS = '/run/containerd-cvmfs-grpc/containerd-cvmfs-grpc.sock';
export const PLUGIN_DIR = '/run/docker/plugins';

export interface CommonOptions {
  /** prefix of every default path (tests, or a node's root mounted in a pod) */
  rootPrefix: string;
  stateDir: string;
  systemdDir: string;
  /** install our systemd units (false: the daemon runs elsewhere, e.g. a DaemonSet) */
  units: boolean;
  /** ExecStart command of the units */
  exec: string;
  /** systemctl argv prefix */
  systemctl: string[];
  /** run systemctl (else print what to run) */
  systemdRunning: boolean;
  /** restart containerd/dockerd when their configuration changed */
  restart: boolean;
  repository?: string | undefined;
  cvmfsRoot?: string | undefined;
  /** Options the undo needs again, as given (`--state-dir …`, `--storage-conf …`), for the printed undo command. */
  undoArgs?: string[] | undefined;
}

export interface ContainerdOptions {
  containerdConfig: string;
  snapshotterConfig: string;
  pluginName: string;
  /** our socket; undefined: the snapshotter config's `address`, else the default */
  address?: string | undefined;
  kubernetes: boolean;
  /** Kubernetes: a runtime handler on containerd's overlayfs for the snapshotter's own pods */
  bootstrapRuntime?: string | undefined;
  /** config version of a new file (undefined: from `containerd --version`) */
  configVersion?: 2 | 3 | undefined;
}

export interface DockerOptions {
  daemonJson: string;
  mode: DockerMode | 'auto';
  /** e.g. "20.10.24" (undefined: `dockerd --version`) */
  dockerVersion?: string | undefined;
  graphdriverName: string;
  graphdriverConfig: string;
  containerd: ContainerdOptions;
  /** also set up the volume plugin */
  volumes?: VolumesOptions | undefined;
  /** the volume plugin's config (its socket name must differ from the graph driver's) */
  volumePluginConfig: string;
}

export interface VolumesOptions {
  volumePluginConfig: string;
  volumeDriverName: string;
  /** the graph driver's config (its socket name must differ from the volume plugin's) */
  graphdriverConfig: string;
}

export interface Plan {
  target: Target;
  changes: FileChange[];
  warnings: string[];
  /** our units to enable and (re)start when their files changed */
  units: string[];
  /** runtime services and the files whose change means a restart */
  runtimes: { service: string; files: string[] }[];
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function checkName(what: string, v: string): void {
  if (!NAME.test(v)) throw new InvalidArgumentError(`${what} ${JSON.stringify(v)}: use letters, digits, '.', '_', '-'`, 'CVMFS_THIN_BAD_FLAG');
}

function fileChange(file: string, before: Buffer | null, after: string, mode?: number): FileChange {
  return { path: file, before, after: Buffer.from(after), ...(mode !== undefined ? { mode } : {}) };
}

/** A daemon's config file: created from the packaged example, or edited; `keys` are set in it. */
async function daemonConfig(d: Daemon, file: string, keys: Record<string, string>): Promise<FileChange> {
  const before = readIfExists(file);
  const src = before?.toString('utf8') ?? configTemplate(d);
  const text = await editToml(src, file, (doc) => Object.assign(doc, keys));
  return fileChange(file, before, text);
}

/** A key of an existing daemon config file (for names/sockets chosen earlier). */
function configKey(file: string, key: string): string | undefined {
  const b = readIfExists(file);
  if (!b) return undefined;
  const v = parseTomlFile(b.toString('utf8'), file)[key];
  return typeof v === 'string' ? v : undefined;
}

/** A path as the node sees it (files written under --root-prefix name paths without it). */
function nodePath(o: CommonOptions, p: string): string {
  return o.rootPrefix && p.startsWith(`${o.rootPrefix}/`) ? p.slice(o.rootPrefix.length) : p;
}

function unitChange(o: CommonOptions, d: Daemon, configPath: string): FileChange {
  const file = path.join(o.systemdDir, DAEMONS[d].unit);
  return fileChange(file, readIfExists(file), renderUnit(d, o.exec, nodePath(o, configPath)));
}

function cvmfsKeys(o: CommonOptions): Record<string, string> {
  return { ...(o.repository ? { repository: o.repository } : {}), ...(o.cvmfsRoot ? { 'cvmfs-root': o.cvmfsRoot } : {}) };
}

/** Major version of containerd from `containerd --version`, or undefined. */
async function containerdMajor(host: Host): Promise<number | undefined> {
  const r = await host.exec('containerd', ['--version'], { timeoutMs: 10_000 });
  const m = / v?(\d+)\.(\d+)\.\d+/.exec(r.stdout);
  return r.code === 0 && m ? Number(m[1]) : undefined;
}

export async function planContainerd(o: CommonOptions, c: ContainerdOptions, host: Host, target: Target = 'containerd'): Promise<Plan> {
  checkName('snapshotter name', c.pluginName);
  if (c.bootstrapRuntime !== undefined) {
    checkName('bootstrap runtime name', c.bootstrapRuntime);
    if (!c.kubernetes) throw new InvalidArgumentError('--bootstrap-runtime is a CRI runtime handler: it needs --kubernetes', 'CVMFS_THIN_BAD_FLAG');
  }
  const address = c.address ?? configKey(c.snapshotterConfig, 'address') ?? SNAPSHOTTER_ADDRESS;
  if (!path.isAbsolute(address))
    throw new InvalidArgumentError(`snapshotter address ${JSON.stringify(address)} must be an absolute path`, 'CVMFS_THIN_BAD_FLAG');
  const before = readIfExists(c.containerdConfig);
  const version = c.configVersion ?? (before ? 2 : ((await containerdMajor(host)) ?? 1) >= 2 ? 3 : 2);
  const ed = await editContainerdConfig(
    before?.toString('utf8') ?? null,
    c.containerdConfig,
    { pluginName: c.pluginName, address, kubernetes: c.kubernetes, bootstrapRuntime: c.bootstrapRuntime },
    version,
  );
  const changes = [fileChange(c.containerdConfig, before, ed.text)];
  const units: string[] = [];
  if (o.units) {
    const keys = { ...(address !== SNAPSHOTTER_ADDRESS ? { address } : {}), ...cvmfsKeys(o) };
    changes.push(await daemonConfig('snapshotter', c.snapshotterConfig, keys), unitChange(o, 'snapshotter', c.snapshotterConfig));
    units.push(DAEMONS.snapshotter.unit);
  }
  return { target, changes, warnings: ed.warnings, units, runtimes: [{ service: 'containerd.service', files: [c.containerdConfig] }] };
}

/** Docker's major.minor, from the option or `dockerd --version`. */
async function dockerVersion(d: DockerOptions, host: Host): Promise<[number, number]> {
  let v = d.dockerVersion;
  if (v === undefined) {
    const r = await host.exec('dockerd', ['--version'], { timeoutMs: 10_000 });
    if (r.code !== 0)
      throw new FailedPreconditionError(
        `cannot tell the Docker version (dockerd --version: ${(r.stderr || r.stdout).trim()}): pass --docker-version or --mode`,
        'CVMFS_THIN_NO_DOCKER',
      );
    v = r.stdout;
  }
  const m = /(\d+)\.(\d+)/.exec(v);
  if (!m) throw new InvalidArgumentError(`Docker version ${JSON.stringify(v.trim())}: expected e.g. 20.10.24`, 'CVMFS_THIN_BAD_FLAG');
  return [Number(m[1]), Number(m[2])];
}

/** graph driver for 20.10–27, containerd image store for ≥ 28; refused below 20.10. */
export function dockerMode(requested: DockerMode | 'auto', [major, minor]: [number, number]): DockerMode {
  const v = `${major}.${minor}`;
  if (major < 20 || (major === 20 && minor < 10))
    throw new FailedPreconditionError(
      `Docker ${v} is too old: the graph driver needs 20.10–27, the containerd image store 24 or later`,
      'CVMFS_THIN_UNSUPPORTED_DOCKER',
    );
  if (requested === 'graphdriver' && major >= 28)
    throw new FailedPreconditionError(`Docker ${v} has no graph driver plugins (removed in 28): use --mode containerd-store`, 'CVMFS_THIN_UNSUPPORTED_DOCKER');
  if (requested === 'containerd-store' && major < 24)
    throw new FailedPreconditionError(`Docker ${v} has no containerd image store (24 or later): use --mode graphdriver`, 'CVMFS_THIN_UNSUPPORTED_DOCKER');
  if (requested !== 'auto') return requested;
  return major >= 28 ? 'containerd-store' : 'graphdriver';
}

const socketName = (socket: string | undefined) => (socket ? path.basename(socket, '.sock') : 'cvmfs');

function refuseClash(gd: string, vol: string): void {
  if (gd === vol) {
    throw new InvalidArgumentError(
      `the graph driver and the volume plugin would both be "${gd}" (${PLUGIN_DIR}/${gd}.sock): pass --graphdriver-name or --volume-driver-name with another name`,
      'CVMFS_THIN_NAME_CLASH',
    );
  }
}

export async function planDocker(o: CommonOptions, d: DockerOptions, host: Host): Promise<Plan> {
  checkName('graph driver name', d.graphdriverName);
  const plan: Plan = { target: 'docker', changes: [], warnings: [], units: [], runtimes: [{ service: 'docker.service', files: [d.daemonJson] }] };
  let version: [number, number] | undefined;
  try {
    version = await dockerVersion(d, host);
  } catch (e) {
    if (d.mode === 'auto' || d.dockerVersion !== undefined) throw e;
    plan.warnings.push(`${(e as Error).message}; going on with --mode ${d.mode}`);
  }
  const mode = version ? dockerMode(d.mode, version) : (d.mode as DockerMode);
  const before = readIfExists(d.daemonJson);
  if (mode === 'graphdriver') {
    if (d.volumes) refuseClash(d.graphdriverName, d.volumes.volumeDriverName);
    else if (readIfExists(path.join(o.systemdDir, DAEMONS['volume-plugin'].unit)))
      refuseClash(d.graphdriverName, socketName(configKey(d.volumePluginConfig, 'socket')));
    const ed = editDaemonJson(before?.toString('utf8') ?? null, d.daemonJson, 'graphdriver', d.graphdriverName);
    plan.changes.push(fileChange(d.daemonJson, before, ed.text));
    plan.warnings.push(...ed.warnings);
    if (o.units) {
      const keys = { ...(d.graphdriverName !== 'cvmfs' ? { socket: `${PLUGIN_DIR}/${d.graphdriverName}.sock` } : {}), ...cvmfsKeys(o) };
      plan.changes.push(await daemonConfig('graphdriver', d.graphdriverConfig, keys), unitChange(o, 'graphdriver', d.graphdriverConfig));
      plan.units.push(DAEMONS.graphdriver.unit);
    }
    if (version?.[0] === 27) {
      const dropin = path.join(o.systemdDir, 'docker.service.d', DOCKER27_DROPIN_NAME);
      plan.changes.push(fileChange(dropin, readIfExists(dropin), DOCKER27_DROPIN));
      plan.runtimes[0]!.files.push(dropin);
    }
  } else {
    const c = await planContainerd(o, { ...d.containerd, kubernetes: false }, host, 'docker');
    const ed = editDaemonJson(before?.toString('utf8') ?? null, d.daemonJson, 'containerd-store', d.containerd.pluginName);
    plan.changes.push(...c.changes, fileChange(d.daemonJson, before, ed.text));
    plan.warnings.push(...c.warnings, ...ed.warnings);
    plan.units.push(...c.units);
    // containerd first: dockerd needs the snapshotter when it comes back
    plan.runtimes.unshift(...c.runtimes);
  }
  if (d.volumes) {
    const v = await planVolumes(o, d.volumes, mode === 'graphdriver' ? d.graphdriverName : undefined);
    plan.changes.push(...v.changes);
    plan.units.push(...v.units);
  }
  return plan;
}

export async function planVolumes(o: CommonOptions, v: VolumesOptions, graphdriverName?: string): Promise<Plan> {
  checkName('volume driver name', v.volumeDriverName);
  if (graphdriverName !== undefined) refuseClash(graphdriverName, v.volumeDriverName);
  else if (readIfExists(path.join(o.systemdDir, DAEMONS.graphdriver.unit)))
    refuseClash(socketName(configKey(v.graphdriverConfig, 'socket')), v.volumeDriverName);
  const plan: Plan = { target: 'volumes', changes: [], warnings: [], units: [], runtimes: [] };
  if (!o.units) return plan;
  const keys = {
    ...(v.volumeDriverName !== 'cvmfs' ? { socket: `${PLUGIN_DIR}/${v.volumeDriverName}.sock` } : {}),
    ...(o.cvmfsRoot ? { 'cvmfs-root': o.cvmfsRoot } : {}),
  };
  plan.changes.push(await daemonConfig('volume-plugin', v.volumePluginConfig, keys), unitChange(o, 'volume-plugin', v.volumePluginConfig));
  plan.units.push(DAEMONS['volume-plugin'].unit);
  return plan;
}

interface RunOutput {
  out: (s: string) => void;
}

function isUnitFile(o: CommonOptions, p: string): boolean {
  return p.startsWith(`${o.systemdDir}/`);
}

/** systemctl calls, or the list of them to print when systemd is not running. */
async function systemctl(o: CommonOptions, host: Host, calls: string[][], io: RunOutput, dry: boolean): Promise<void> {
  if (calls.length === 0) return;
  const lines = calls.map((a) => [...o.systemctl, ...a].join(' '));
  if (dry) return io.out(`would run:\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
  if (!o.systemdRunning) return io.out(`systemd is not running here; run:\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
  for (const a of calls) {
    const [file, ...rest] = [...o.systemctl, ...a];
    const r = await host.exec(file!, rest, { timeoutMs: 120_000 });
    if (r.code !== 0)
      throw new FailedPreconditionError(
        `${[file, ...rest].join(' ')} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim()}`,
        'CVMFS_THIN_SYSTEMCTL_FAILED',
      );
    io.out(`ran: ${[file, ...rest].join(' ')}\n`);
  }
}

/** Print the plan's diff (dry run) or apply it, then systemctl. Returns whether anything changed. */
export async function runPlan(o: CommonOptions, plan: Plan, host: Host, io: RunOutput, dryRun: boolean): Promise<boolean> {
  for (const w of plan.warnings) io.out(`warning: ${w}\n`);
  const todo = plan.changes.filter(changed);
  for (const c of todo) io.out(changeDiff(c));
  if (todo.length === 0) {
    io.out(`${plan.target}: nothing to change\n`);
    return false;
  }
  if (!dryRun) await SetupState.open(o.stateDir).apply(plan.target, plan.changes);
  const touched = new Set(todo.map((c) => c.path));
  const calls: string[][] = [];
  if (todo.some((c) => isUnitFile(o, c.path))) calls.push(['daemon-reload']);
  const unitsChanged = plan.units.length > 0 && todo.some((c) => !plan.runtimes.some((r) => r.files.includes(c.path)));
  if (unitsChanged) calls.push(['enable', ...plan.units], ['restart', ...plan.units]);
  if (o.restart) for (const r of plan.runtimes) if (r.files.some((f) => touched.has(f))) calls.push(['restart', r.service]);
  await systemctl(o, host, calls, io, dryRun);
  if (!o.restart && plan.runtimes.some((r) => r.files.some((f) => touched.has(f))))
    io.out(`restart ${plan.runtimes.map((r) => r.service).join(' and ')} for the change to take effect\n`);
  if (!dryRun) io.out(`${plan.target}: done; originals backed up in ${o.stateDir} (undo: ${undoCommand(plan.target, o)})\n`);
  return true;
}

/** A shell word: as it is when safe, else single-quoted. */
function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`;
}

/** The command that undoes `target` with the options this run was given. */
function undoCommand(target: Target, o: CommonOptions): string {
  return ['cvmfs-thin', 'setup', target, '--undo', ...(o.undoArgs ?? [])].map(shellWord).join(' ');
}

/** Undo a target: print the diff (dry run) or restore, then systemctl. */
export async function runUndo(o: CommonOptions, target: Target, host: Host, io: RunOutput, dryRun: boolean): Promise<boolean> {
  const state = SetupState.open(o.stateDir);
  const { changes, warnings } = state.planUndo(target);
  for (const w of warnings) io.out(`warning: ${w}\n`);
  for (const c of changes) io.out(changeDiff(c));
  if (changes.length === 0) {
    io.out(`${target}: nothing to undo\n`);
    return false;
  }
  const restarts = new Set<string>();
  for (const c of changes) {
    if (c.path.endsWith('/daemon.json') || c.path.includes('/docker.service.d/')) restarts.add('docker.service');
    else if (!isUnitFile(o, c.path) && isContainerdConfig(c)) restarts.add('containerd.service');
  }
  const removedUnits = changes.filter((c) => c.after === null && isUnitFile(o, c.path) && c.path.endsWith('.service')).map((c) => path.basename(c.path));
  // the runtimes go back to their own configuration first, then our daemons stop, then their units go
  if (!dryRun) await state.undo(target, (p) => !isUnitFile(o, p));
  await systemctl(o, host, o.restart ? [...restarts].map((s) => ['restart', s]) : [], io, dryRun);
  if (!o.restart && restarts.size > 0) io.out(`restart ${[...restarts].join(' and ')} for the change to take effect\n`);
  await systemctl(o, host, removedUnits.length > 0 ? [['disable', '--now', ...removedUnits]] : [], io, dryRun);
  if (!dryRun) await state.undo(target);
  await systemctl(o, host, changes.some((c) => isUnitFile(o, c.path)) ? [['daemon-reload']] : [], io, dryRun);
  if (!dryRun) io.out(`${target}: restored\n`);
  return true;
}

function isContainerdConfig(c: FileChange): boolean {
  const t = (c.before ?? c.after)?.toString('utf8') ?? '';
  try {
    const doc = parseTomlFile(t, c.path);
    return isTable(doc['proxy_plugins']) || isTable(doc['plugins']) || doc['version'] !== undefined;
  } catch {
    return false;
  }
}
