/**
 * The Docker VolumeDriver semantics over the shared repository mount manager
 * (src/core/volumes/manager.ts), as the protocol was observed against
 * dockerd 20.10 (facts: the project's volume notes, §2-3):
 *
 * - dockerd calls Create only when Get failed, and Create is the only call
 *   that carries `-o` / `volume-opt=` options. So Get answers only volumes
 *   that exist: created (a durable definition, kept across plugin and dockerd
 *   restarts until Remove), mounted now, or listed in `known-volumes`. For any
 *   other name Get fails ("no such volume"), dockerd calls Create, and Create
 *   applies every option or refuses the volume naming the option: an option is
 *   never dropped. The price: `-v repo:/x` without `--volume-driver cvmfs`
 *   finds only existing volumes (dockerd asks every plugin's Get, then falls
 *   back to `local`); `known-volumes` names repositories for that flow.
 *   The Name answered is exactly the one asked (dockerd adopts whatever we say).
 * - dockerd's `volume ls` shows exactly List's answer: what Get answers, List
 *   shows.
 * - Mount/Unmount are keyed by dockerd's mount ID (holder `docker:<ID>`):
 *   idempotent per ID (dockerd reuses an ID after a failed Unmount), an
 *   unknown ID unmounts successfully (after a plugin restart or a cleanup).
 *   Calls for one ID run one after another.
 */
import type { Logger } from 'pino';
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from '../core/errors/errors.js';
import { KeyedMutex } from '../core/util/keyed-mutex.js';
import { type VolumeSpec, volumeKey } from '../core/volumes/spec.js';
import type { Definition, Holder, VolumeState } from '../core/volumes/types.js';

/** What the driver needs of the mount manager (MountManager implements it). */
export interface VolumeManager {
  parse(name: string, opts?: Record<string, string>): VolumeSpec;
  acquire(spec: VolumeSpec, holder: { id: string; readonly?: boolean; meta?: Record<string, string> }): Promise<VolumeState>;
  release(holderId: string): Promise<boolean>;
  holder(id: string): { key: string; holder: Holder } | undefined;
  get(key: string): VolumeState | undefined;
  list(): VolumeState[];
  define(name: string, spec: VolumeSpec, opts: Record<string, string>): Promise<Definition>;
  undefine(name: string): Promise<boolean>;
  definition(name: string): Definition | undefined;
  definitions(): Definition[];
  close(): Promise<void>;
}

/** A volume as VolumeDriver.Get and List describe it. */
interface VolumeInfo {
  Name: string;
  Mountpoint: string;
  CreatedAt?: string;
  Status: Record<string, string | number | boolean>;
}

const HOLDER_PREFIX = 'docker:';
const holderId = (mountId: string): string => `${HOLDER_PREFIX}${mountId}`;

function sameOpts(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

export interface DockerVolumeDriverOptions {
  /**
   * Names that exist without a Create (as if created without options): Get
   * answers them, so `-v NAME:/path` works without `--volume-driver`, and
   * volumes of docker-volume-cvmfs (which answered Get for any name) survive
   * the move. Each must be a valid, allowed volume name.
   */
  knownVolumes?: readonly string[] | undefined;
}

/** Refuse a `known-volumes` entry that is not a valid, allowed volume name, naming it. */
export function checkKnownVolumes(names: readonly string[], parse: (name: string) => unknown): void {
  for (const n of names) {
    try {
      parse(n);
    } catch (e) {
      throw new InvalidArgumentError(`known-volumes: ${(e as Error).message}`, 'CVMFS_THIN_BAD_VOLUME');
    }
  }
}

export class DockerVolumeDriver {
  private readonly locks = new KeyedMutex();
  private readonly known: ReadonlySet<string>;

  constructor(
    private readonly manager: VolumeManager,
    private readonly log: Logger,
    o: DockerVolumeDriverOptions = {},
  ) {
    checkKnownVolumes(o.knownVolumes ?? [], (n) => manager.parse(n));
    this.known = new Set(o.knownVolumes ?? []);
  }

  /**
   * The spec a name stands for: its definition's, else parsed from the name.
   * The name is checked every time (a defined name is refused once the
   * allowlist no longer allows it).
   */
  private resolve(name: string): { spec: VolumeSpec; def: Definition | undefined } {
    const parsed = this.manager.parse(name);
    const def = this.manager.definition(name);
    return def ? { spec: def.spec, def } : { spec: parsed, def: undefined };
  }

  /** Is a Docker container holding this name now (whatever its definition)? */
  private mountedByName(name: string): boolean {
    return this.manager.list().some((st) => this.dockerHolders(name, st).length > 0);
  }

  /** Docker mount holders of a volume name. */
  private dockerHolders(name: string, st: VolumeState | undefined): Holder[] {
    return (st?.holders ?? []).filter((h) => h.id.startsWith(HOLDER_PREFIX) && h.meta?.['name'] === name);
  }

  /** `states`: the manager's volumes by key, when describing many (one mount table read). */
  private describe(name: string, spec: VolumeSpec, def: Definition | undefined, states?: Map<string, VolumeState>): VolumeInfo {
    const st = states ? states.get(volumeKey(spec)) : this.manager.get(volumeKey(spec));
    const mounted = st?.mounted === true;
    const status: Record<string, string | number | boolean> = { repository: spec.repository ?? '/', key: volumeKey(spec), mounted };
    if (st) status['backend'] = st.backend;
    if (spec.tag) status['tag'] = spec.tag;
    if (spec.hash) status['hash'] = spec.hash;
    if (spec.date) status['date'] = spec.date;
    if (spec.clientConfig) status['clientConfig'] = spec.clientConfig;
    status['holders'] = st?.holders.length ?? 0;
    status['containers'] = this.dockerHolders(name, st).length;
    const since = st?.holders.map((h) => h.since).sort()[0];
    const createdAt = def?.createdAt ?? since;
    return { Name: name, Mountpoint: mounted ? st.path : '', ...(createdAt ? { CreatedAt: createdAt } : {}), Status: status };
  }

  async create(name: string, opts: Record<string, string> | null): Promise<void> {
    const o = opts ?? {};
    const spec = this.manager.parse(name, o);
    await this.locks.with([`name:${name}`], async () => {
      const def = this.manager.definition(name);
      if (def) {
        if (Object.keys(o).length === 0 || sameOpts(def.opts, o)) return;
        if (this.dockerHolders(name, this.manager.get(volumeKey(def.spec))).length > 0) {
          throw new AlreadyExistsError(
            `volume ${name} is mounted with options ${JSON.stringify(def.opts)}; it cannot be redefined with ${JSON.stringify(o)} while containers use it`,
            'CVMFS_THIN_VOLUME_IN_USE',
          );
        }
        await this.manager.undefine(name);
      }
      await this.manager.define(name, spec, o);
      this.log.info({ volume: name, opts: o }, 'volume defined');
    });
  }

  /**
   * A volume that exists (defined, known, or mounted). Any other name is "no
   * such volume", so that dockerd calls Create with the options.
   */
  get(name: string): VolumeInfo {
    const { spec, def } = this.resolve(name);
    if (!def && !this.known.has(name) && !this.mountedByName(name)) {
      throw new NotFoundError(
        `no such volume: ${name} (create it: docker volume create -d <this driver> --name=${name} [-o tag=…], or run with --volume-driver)`,
        'CVMFS_THIN_NO_SUCH_VOLUME',
      );
    }
    return this.describe(name, spec, def);
  }

  list(): VolumeInfo[] {
    const names = new Set([...this.manager.definitions().map((d) => d.name), ...this.known]);
    const states = new Map<string, VolumeState>();
    for (const st of this.manager.list()) {
      states.set(st.key, st);
      for (const h of st.holders) if (h.id.startsWith(HOLDER_PREFIX) && h.meta?.['name']) names.add(h.meta['name']);
    }
    const out: VolumeInfo[] = [];
    for (const n of [...names].sort()) {
      try {
        const { spec, def } = this.resolve(n);
        out.push(this.describe(n, spec, def, states));
      } catch (e) {
        // a name mounted under an allowlist since narrowed: still listed, so that it can be found and stopped
        this.log.warn({ volume: n, err: (e as Error).message }, 'listing a volume whose name is no longer valid');
        out.push({ Name: n, Mountpoint: '', Status: { error: (e as Error).message } });
      }
    }
    return out;
  }

  path(name: string): string {
    const { spec, def } = this.resolve(name);
    return this.describe(name, spec, def).Mountpoint;
  }

  async remove(name: string): Promise<void> {
    await this.locks.with([`name:${name}`], async () => {
      if (await this.manager.undefine(name)) this.log.info({ volume: name }, 'volume removed');
    });
  }

  async mount(name: string, id: string): Promise<string> {
    const { spec } = this.resolve(name);
    return this.locks.with([`id:${id}`], async () => {
      const held = this.manager.holder(holderId(id));
      const heldName = held?.holder.meta?.['name'];
      if (held && heldName !== name) {
        throw new InvalidArgumentError(
          `mount ID ${id} already holds volume ${JSON.stringify(heldName ?? held.key)}, not ${JSON.stringify(name)}`,
          'CVMFS_THIN_BAD_REQUEST',
        );
      }
      const st = await this.manager.acquire(spec, { id: holderId(id), readonly: true, meta: { name } });
      this.log.info({ volume: name, id, path: st.path, holders: st.holders.length, again: Boolean(held) }, 'volume mounted');
      return st.path;
    });
  }

  async unmount(name: string, id: string): Promise<void> {
    await this.locks.with([`id:${id}`], async () => {
      const held = this.manager.holder(holderId(id));
      if (!held) {
        this.log.info({ volume: name, id }, 'unmount of an unknown mount ID: nothing to do');
        return;
      }
      const heldName = held.holder.meta?.['name'];
      if (heldName !== undefined && heldName !== name) {
        throw new InvalidArgumentError(`mount ID ${id} holds volume ${JSON.stringify(heldName)}, not ${JSON.stringify(name)}`, 'CVMFS_THIN_BAD_REQUEST');
      }
      await this.manager.release(holderId(id));
      this.log.info({ volume: name, id }, 'volume unmounted');
    });
  }

  close(): Promise<void> {
    return this.manager.close();
  }
}
