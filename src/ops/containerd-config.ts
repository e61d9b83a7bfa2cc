/**
 * containerd's config.toml for our snapshotter: the `proxy_plugins` entry,
 * and for Kubernetes (CRI) the snapshotter used for pulls and the layer
 * annotations remote layers need. Version 2 files (containerd 1.6/1.7, also
 * read by 2.x) and version 3 files (containerd 2.x) are edited in place;
 * version 1 files are refused.
 */
import { InvalidArgumentError } from '../core/errors/errors.js';
import { editToml, isTable, parseTomlFile, type Table, tableAt } from './toml-edit.js';

interface ContainerdSettings {
  /** proxy_plugins name = the snapshotter name (`ctr --snapshotter`, CRI's snapshotter) */
  pluginName: string;
  /** our snapshotter's socket */
  address: string;
  /** Kubernetes: CRI pulls through our snapshotter with the layer annotations */
  kubernetes: boolean;
  /**
   * Kubernetes: a CRI runtime handler of this name that uses containerd's own
   * overlayfs snapshotter (containerd >= 1.7), for the pods that run the
   * snapshotter itself (RuntimeClass; they must not depend on it).
   */
  bootstrapRuntime?: string | undefined;
}

/** The CRI runtimes table of a config version. */
function criRuntimes(version: 2 | 3): string[] {
  return version === 2
    ? ['plugins', 'io.containerd.grpc.v1.cri', 'containerd', 'runtimes']
    : ['plugins', 'io.containerd.cri.v1.runtime', 'containerd', 'runtimes'];
}

/** The CRI table of a config version (its snapshotter and disable_snapshot_annotations keys). */
function criTable(version: 2 | 3): string[] {
  return version === 2 ? ['plugins', 'io.containerd.grpc.v1.cri', 'containerd'] : ['plugins', 'io.containerd.cri.v1.images'];
}

/** The config version of a parsed file, or a clear refusal. */
function configVersion(doc: Table, file: string): 2 | 3 {
  const v = doc['version'];
  if (v === undefined) {
    throw new InvalidArgumentError(
      `${file}: no "version" key, so this is a version 1 configuration (plugin names like [plugins.cri]); convert it first (containerd config migrate, containerd >= 1.7) or write it as version = 2; the file was not changed`,
      'CVMFS_THIN_BAD_CONFIG',
    );
  }
  if (v === 2 || v === 3) return v;
  throw new InvalidArgumentError(`${file}: version = ${String(v)} is not supported (2 or 3); the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
}

const SNAPSHOT_TYPES = new Set(['snapshot', 'io.containerd.snapshotter.v1']);

function mutation(version: 2 | 3, s: ContainerdSettings, file: string): (doc: Table) => void {
  return (doc) => {
    const p = tableAt(doc, ['proxy_plugins', s.pluginName], file);
    if (typeof p['type'] !== 'string' || !SNAPSHOT_TYPES.has(p['type'])) p['type'] = 'snapshot';
    p['address'] = s.address;
    if (!s.kubernetes) return;
    const cri = tableAt(doc, criTable(version), file);
    cri['snapshotter'] = s.pluginName;
    cri['disable_snapshot_annotations'] = false;
    // containerd >= 2.1 pulls through the transfer service, which passes the layer labels only when asked to
    if (version === 3) tableAt(doc, ['proxy_plugins', s.pluginName, 'exports'], file)['enable_remote_snapshot_annotations'] = 'true';
    if (s.bootstrapRuntime) {
      const runtimes = tableAt(doc, criRuntimes(version), file);
      const rt = tableAt(runtimes, [s.bootstrapRuntime], file);
      rt['runtime_type'] = 'io.containerd.runc.v2';
      rt['snapshotter'] = 'overlayfs';
      // same runc options as the default runtime (SystemdCgroup must match the kubelet's cgroup driver)
      const runc = runtimes['runc'];
      const opts = isTable(runc) && isTable(runc['options']) ? runc['options'] : undefined;
      if (opts && rt['options'] === undefined) rt['options'] = { ...opts };
    }
  };
}

/** A new file: the version that containerd writes by default. */
export function newConfig(version: 2 | 3): string {
  return `# containerd configuration, written by cvmfs-thin setup (containerd config default shows every key)\nversion = ${version}\n`;
}

interface ContainerdEdit {
  text: string;
  version: 2 | 3;
  warnings: string[];
}

/** The edited config (or `text` itself when it already is as wanted). `text` null: the file does not exist. */
export async function editContainerdConfig(text: string | null, file: string, s: ContainerdSettings, versionIfNew: 2 | 3): Promise<ContainerdEdit> {
  const src = text ?? newConfig(versionIfNew);
  const doc = parseTomlFile(src, file);
  const version = configVersion(doc, file);
  const warnings: string[] = [];
  const disabled = doc['disabled_plugins'];
  if (s.kubernetes && Array.isArray(disabled)) {
    const cri = disabled.filter((d) => d === 'cri' || d === 'io.containerd.grpc.v1.cri' || (typeof d === 'string' && d.startsWith('io.containerd.cri.v1.')));
    if (cri.length > 0)
      warnings.push(
        `${file}: disabled_plugins contains ${cri.map((c) => JSON.stringify(c)).join(', ')}: Kubernetes needs the CRI plugin enabled (not changed by setup)`,
      );
  }
  const proxies = doc['proxy_plugins'];
  if (isTable(proxies)) {
    for (const [name, p] of Object.entries(proxies)) {
      if (name !== s.pluginName && isTable(p) && p['address'] === s.address) warnings.push(`${file}: proxy_plugins.${name} also points at ${s.address}`);
    }
  }
  return { text: await editToml(src, file, mutation(version, s, file)), version, warnings };
}

/** What a config says about our snapshotter, for `doctor`. */
export function inspectContainerdConfig(
  text: string,
  file: string,
): { version: 2 | 3; proxies: Record<string, string>; criSnapshotter: string | undefined; annotations: boolean } {
  const doc = parseTomlFile(text, file);
  const version = configVersion(doc, file);
  const proxies: Record<string, string> = {};
  const pp = doc['proxy_plugins'];
  if (isTable(pp)) for (const [n, p] of Object.entries(pp)) if (isTable(p) && typeof p['address'] === 'string') proxies[n] = p['address'];
  let t: unknown = doc;
  for (const k of criTable(version)) t = isTable(t) ? t[k] : undefined;
  const cri = isTable(t) ? t : {};
  return {
    version,
    proxies,
    criSnapshotter: typeof cri['snapshotter'] === 'string' ? cri['snapshotter'] : undefined,
    annotations: cri['disable_snapshot_annotations'] === false,
  };
}
