/**
 * The mount manager's durable state: volumes with their holders, and Docker
 * volume definitions, on the shared journal (src/core/state/journal.ts). Every
 * change is one full-value record committed (group commit, O_DSYNC) before the
 * caller answers, so a kill -9 at any instant leaves a state that the manager
 * reconciles with the mount table when it opens again.
 */
import path from 'node:path';
import { FailedPreconditionError } from '../errors/errors.js';
import { Journal, type JournalOptions } from '../state/journal.js';
import type { Backend, Definition, Holder } from './types.js';
import type { VolumeSpec } from './spec.js';

/** A holder as stored: the public record plus what unpublish must undo. */
export interface StoredHolder extends Holder {
  /** publish() created the target directory (unpublish removes it). */
  createdDir?: boolean | undefined;
  /** publish() bound from this path rather than the volume's own (CSI staging path). */
  source?: string | undefined;
}

export interface VolumeRecord {
  key: string;
  spec: VolumeSpec;
  backend: Backend | 'tree';
  holders: StoredHolder[];
}

interface Rec {
  vol?: VolumeRecord;
  delVol?: string;
  def?: Definition;
  undef?: string;
}

interface State {
  schema: 'cvmfs-thin/volumes';
  version: 1;
  volumes: VolumeRecord[];
  definitions: Definition[];
}

export class VolumeStore {
  readonly volumes = new Map<string, VolumeRecord>();
  readonly definitions = new Map<string, Definition>();
  /** holder id → volume key. */
  private readonly holderIndex = new Map<string, string>();

  private constructor(private readonly journal: Journal<Rec>) {
    journal.onSnapshot((): State => ({
      schema: 'cvmfs-thin/volumes',
      version: 1,
      volumes: [...this.volumes.values()],
      definitions: [...this.definitions.values()],
    }));
  }

  static async open(dir: string, onFatal: (e: Error) => void, onCommit?: JournalOptions['onCommit']): Promise<VolumeStore> {
    const { journal, state, records } = await Journal.open<Rec>({ dir, name: 'volumes', onFatal, onCommit, compactAfterBytes: 1 << 20 });
    const store = new VolumeStore(journal);
    if (state !== null) {
      const st = state as State;
      if (st.schema !== 'cvmfs-thin/volumes' || st.version !== 1)
        throw new FailedPreconditionError(
          `${path.join(dir, 'volumes.state')}: volume state schema ${String(st.schema)}/${String(st.version)} is not supported`,
          'CVMFS_THIN_BAD_STATE',
        );
      for (const v of st.volumes) store.apply({ vol: v });
      for (const d of st.definitions) store.apply({ def: d });
    }
    for (const r of records) store.apply(r);
    return store;
  }

  private apply(r: Rec): void {
    if (r.vol) {
      this.dropIndex(r.vol.key);
      if (r.vol.holders.length === 0) this.volumes.delete(r.vol.key);
      else {
        this.volumes.set(r.vol.key, r.vol);
        for (const h of r.vol.holders) this.holderIndex.set(h.id, r.vol.key);
      }
    }
    if (r.delVol !== undefined) {
      this.dropIndex(r.delVol);
      this.volumes.delete(r.delVol);
    }
    if (r.def) this.definitions.set(r.def.name, r.def);
    if (r.undef !== undefined) this.definitions.delete(r.undef);
  }

  private dropIndex(key: string): void {
    for (const h of this.volumes.get(key)?.holders ?? []) if (this.holderIndex.get(h.id) === key) this.holderIndex.delete(h.id);
  }

  keyOfHolder(id: string): string | undefined {
    return this.holderIndex.get(id);
  }

  /** Durably store a volume's holders (none: the record goes). Applied in memory once durable. */
  async putVolume(v: VolumeRecord): Promise<void> {
    const rec: Rec = { vol: structuredClone(v) };
    // applied in memory once durable, before a compaction can snapshot the state
    await this.journal.append(rec, () => this.apply(rec));
  }

  async putDefinition(d: Definition): Promise<void> {
    await this.journal.append({ def: d }, () => this.apply({ def: d }));
  }

  async deleteDefinition(name: string): Promise<void> {
    await this.journal.append({ undef: name }, () => this.apply({ undef: name }));
  }

  close(): Promise<void> {
    return this.journal.close();
  }
}
