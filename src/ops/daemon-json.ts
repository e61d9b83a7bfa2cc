/**
 * dockerd's daemon.json: the storage driver (our graph driver plugin, or the
 * containerd image store with our snapshotter). Every other key is kept, in
 * its order; the file's indentation is kept (JSON has no comments to keep).
 */
import { isDeepStrictEqual } from 'node:util';
import { InvalidArgumentError } from '../core/errors/errors.js';

export type DockerMode = 'graphdriver' | 'containerd-store';

interface DaemonJsonEdit {
  text: string;
  warnings: string[];
  /** the storage driver before the edit (undefined: dockerd's default) */
  previousDriver: string | undefined;
}

/** Parse, or refuse naming the line and column. */
function parseDaemonJson(text: string, file: string): Record<string, unknown> {
  if (text.trim() === '') return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    const msg = (e as Error).message;
    const pos = /position (\d+)/.exec(msg);
    let where = '';
    if (pos) {
      const before = text.slice(0, Number(pos[1]));
      const line = before.split('\n').length;
      where = `line ${line}, column ${Number(pos[1]) - before.lastIndexOf('\n')}: `;
    } else if (/Unexpected end/.test(msg)) where = `line ${text.split('\n').length}: `;
    throw new InvalidArgumentError(
      `${file}: ${where}not valid JSON (${msg.replace(/ in JSON at position \d+.*$/, '')}); the file was not changed`,
      'CVMFS_THIN_BAD_CONFIG',
    );
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new InvalidArgumentError(`${file}: not a JSON object; the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
  return v as Record<string, unknown>;
}

function indentOf(text: string): string | number {
  const m = /\n([ \t]+)"/.exec(text);
  return m ? m[1]! : 2;
}

/**
 * Set the storage driver. `driver` is the graph driver plugin name (its
 * socket's base name) or, in containerd-store mode, the containerd
 * snapshotter name.
 */
export function editDaemonJson(text: string | null, file: string, mode: DockerMode, driver: string): DaemonJsonEdit {
  const src = text ?? '';
  const before = parseDaemonJson(src, file);
  const doc = structuredClone(before);
  const warnings: string[] = [];
  const previousDriver = typeof before['storage-driver'] === 'string' ? before['storage-driver'] : undefined;
  if (mode === 'graphdriver') {
    doc['experimental'] = true;
    const f = doc['features'];
    if (typeof f === 'object' && f !== null && (f as Record<string, unknown>)['containerd-snapshotter'] === true) {
      doc['features'] = { ...(f as Record<string, unknown>), 'containerd-snapshotter': false };
      warnings.push(`${file}: features.containerd-snapshotter was true: set to false, graph driver plugins are not used with the containerd image store`);
    }
  } else {
    const f = doc['features'];
    if (f !== undefined && (typeof f !== 'object' || f === null || Array.isArray(f)))
      throw new InvalidArgumentError(`${file}: "features" is not an object; the file was not changed`, 'CVMFS_THIN_BAD_CONFIG');
    doc['features'] = { ...(f as Record<string, unknown> | undefined), 'containerd-snapshotter': true };
  }
  doc['storage-driver'] = driver;
  if (previousDriver !== driver) {
    warnings.push(
      `${file}: storage driver ${previousDriver ? `"${previousDriver}"` : "(dockerd's default)"} → "${driver}": images and containers of the previous driver are hidden (they stay on disk) until it is switched back`,
    );
    if (before['storage-opts'] !== undefined) {
      delete doc['storage-opts'];
      warnings.push(`${file}: removed "storage-opts" ${JSON.stringify(before['storage-opts'])}: they were the previous driver's (kept in the backup)`);
    }
  }
  if (isDeepStrictEqual(before, doc) && text !== null) return { text: src, warnings: [], previousDriver };
  return { text: `${JSON.stringify(doc, null, indentOf(src))}\n`, warnings, previousDriver };
}

/** What daemon.json says, for `doctor`. */
export function inspectDaemonJson(text: string, file: string): { driver: string | undefined; experimental: boolean; containerdStore: boolean } {
  const d = parseDaemonJson(text, file);
  const f = d['features'];
  return {
    driver: typeof d['storage-driver'] === 'string' ? d['storage-driver'] : undefined,
    experimental: d['experimental'] === true,
    containerdStore: typeof f === 'object' && f !== null && (f as Record<string, unknown>)['containerd-snapshotter'] === true,
  };
}
