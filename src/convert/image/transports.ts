/** Opening sources and targets from transport references; one registry client per registry. */
import type { Logger } from 'pino';
import type { Host } from '../../core/host/host.js';
import type { Credentials } from '../registry/auth.js';
import { type FetchFn, RegistryClient } from '../registry/client.js';
import { type DockerReference, formatDockerReference, type ImageReference } from '../reference.js';
import { DockerArchiveSource, DockerArchiveTarget, OciArchiveTarget, openOciArchive } from './archive.js';
import { OciLayoutSource, OciLayoutTarget } from './oci-layout.js';
import { RegistrySource, RegistryTarget } from './registry.js';
import type { ImageSource, ImageTarget } from './source.js';

export interface TransportOptions {
  /** Credentials for source registries (`--src-creds`/`--creds`); undefined = auth files. */
  creds?: Credentials | undefined;
  /** Credentials for the thin-image target registry (`--dest-creds`); undefined = auth files. */
  destCreds?: Credentials | undefined;
  /** Plain HTTP allowed for every registry (loopback registries always may). */
  insecure?: boolean | undefined;
  /** Registries (canonical names) reached over plain HTTP (`http://` wishlist entries). */
  insecureRegistries?: Set<string> | undefined;
  log?: Logger | undefined;
  signal?: AbortSignal | undefined;
  /** Where archives are spooled (default: the system temp dir). */
  tmpDir?: string | undefined;
  retries?: number | undefined;
  backoffMs?: number | undefined;
  /** HTTP client of the registry clients (default: the global fetch). */
  fetch?: FetchFn | undefined;
  /** Runs credential helpers and takes the OCI layouts' and archive spools' locks. */
  host: Host;
}

/** Registry clients shared by sources and targets of one run (tokens and scheme probes are reused). */
export class Registries {
  private readonly clients = new Map<string, RegistryClient>();
  constructor(private readonly o: TransportOptions) {}
  client(registry: string, role: 'source' | 'target' = 'source'): RegistryClient {
    const key = `${role}\n${registry}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new RegistryClient({
        registry,
        insecure: this.o.insecure === true || (this.o.insecureRegistries?.has(registry) ?? false),
        credentials: role === 'target' ? this.o.destCreds : this.o.creds,
        host: this.o.host,
        log: this.o.log,
        signal: this.o.signal,
        retries: this.o.retries,
        backoffMs: this.o.backoffMs,
        fetch: this.o.fetch,
      });
      this.clients.set(key, c);
    }
    return c;
  }
}

export async function openSource(ref: ImageReference, regs: Registries, o: TransportOptions): Promise<ImageSource> {
  switch (ref.transport) {
    case 'docker':
      return new RegistrySource(regs.client(ref.ref.registry, 'source'), ref.ref);
    case 'oci':
      return new OciLayoutSource(ref.path, ref.tag);
    case 'oci-archive':
      return openOciArchive(ref.path, ref.tag, o.host, o.tmpDir);
    case 'docker-archive':
      return DockerArchiveSource.open(ref.path, { ref: ref.ref, index: ref.index }, o.host, o.tmpDir);
  }
}

/** `name` is the image's full name, recorded in OCI layouts (io.containerd.image.name) and used as docker-archive RepoTag when the reference has none. */
export function openTarget(ref: ImageReference, regs: Registries, o: TransportOptions, name?: DockerReference): ImageTarget {
  switch (ref.transport) {
    case 'docker':
      return new RegistryTarget(regs.client(ref.ref.registry, 'target'), ref.ref);
    case 'oci':
      return new OciLayoutTarget(ref.path, ref.tag ?? name?.tag ?? 'latest', o.host, name ? formatDockerReference(name) : undefined);
    case 'oci-archive':
      return new OciArchiveTarget(ref.path, ref.tag ?? name?.tag ?? 'latest', o.host, o.tmpDir, name ? formatDockerReference(name) : undefined);
    case 'docker-archive':
      return new DockerArchiveTarget(ref.path, ref.ref ?? name, o.host);
  }
}
