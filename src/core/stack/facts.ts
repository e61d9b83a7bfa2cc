/**
 * The one layer-facts cache of both daemons: what a CVMFS layer directory
 * turned out to be (trusted overlay layer, clean, or masked and where its
 * masks are), so that a layer is scanned once. Derived data: a lost or
 * unreadable file only means layers are scanned again. Written rarely (once
 * per newly seen layer), as one small JSON file replaced atomically.
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { LayerFacts, LayerFactsCache } from '../cvmfs/layers.js';
import { writeFileAtomic } from '../fsutil.js';

export class FactsFile implements LayerFactsCache {
  private constructor(
    private readonly file: string,
    private readonly map: Map<string, LayerFacts>,
  ) {}

  static async open(file: string, log?: Logger): Promise<FactsFile> {
    const map = new Map<string, LayerFacts>();
    try {
      const o = JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, LayerFacts>;
      for (const [k, v] of Object.entries(o)) if (v && typeof v === 'object' && typeof v.mode === 'string') map.set(k, v);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log?.warn({ err: e, file }, 'layer facts cache unreadable; layers will be scanned again');
    }
    return new FactsFile(file, map);
  }

  get(key: string): LayerFacts | undefined {
    return this.map.get(key);
  }

  async put(key: string, facts: LayerFacts): Promise<void> {
    this.map.set(key, facts);
    await this.save();
  }

  /** Drop the entries `keep` refuses (e.g. whose masks were removed). */
  async prune(keep: (f: LayerFacts) => boolean): Promise<void> {
    let changed = false;
    for (const [k, f] of this.map) {
      if (!keep(f)) {
        this.map.delete(k);
        changed = true;
      }
    }
    if (changed) await this.save();
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(Object.fromEntries(this.map), null, 1)}\n`);
  }
}
