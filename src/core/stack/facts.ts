/**
 * The one layer-facts cache of both daemons: what a CVMFS layer directory
 * turned out to be (trusted overlay layer, clean, or masked and where its
 * masks are), so that a layer is scanned once. Derived data: a lost, stale or
 * unreadable file only means layers are scanned again. So it is written
 * behind: `put` answers at once and the file (one small JSON file replaced
 * atomically) is rewritten in the background, once for all the puts made
 * meanwhile — a thin image of 100 new layers costs one write, not 100 fsyncs
 * on the start path. `flush` waits for it (daemon stop).
 */
import { promises as fsp } from 'node:fs';
import type { Logger } from 'pino';
import type { LayerFacts, LayerFactsCache } from './layers.js';
import { writeFileAtomic } from '../fs/fsutil.js';

export class FactsFile implements LayerFactsCache {
  /** The write in progress (it writes the map as it is when it starts). */
  private writing: Promise<void> | null = null;
  /** Changes made since the write in progress started. */
  private dirty = false;

  private constructor(
    private readonly file: string,
    private readonly map: Map<string, LayerFacts>,
    private readonly log: Logger | undefined,
  ) {}

  static async open(file: string, log?: Logger): Promise<FactsFile> {
    const map = new Map<string, LayerFacts>();
    try {
      const o = JSON.parse(await fsp.readFile(file, 'utf8')) as Record<string, LayerFacts>;
      for (const [k, v] of Object.entries(o)) if (v && typeof v === 'object' && typeof v.mode === 'string') map.set(k, v);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log?.warn({ err: e, file }, 'layer facts cache unreadable; layers will be scanned again');
    }
    return new FactsFile(file, map, log);
  }

  get(key: string): LayerFacts | undefined {
    return this.map.get(key);
  }

  /** Remember `facts`; written behind (never fails: a failed write is logged, the facts stay in memory). */
  async put(key: string, facts: LayerFacts): Promise<void> {
    this.map.set(key, facts);
    this.schedule();
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
    if (changed) this.schedule();
  }

  /** Wait until the file holds every change made so far. */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private schedule(): void {
    if (this.writing) {
      this.dirty = true;
      return;
    }
    this.writing = (async () => {
      do {
        this.dirty = false;
        try {
          await writeFileAtomic(this.file, `${JSON.stringify(Object.fromEntries(this.map), null, 1)}\n`);
        } catch (e) {
          this.log?.warn({ err: e, file: this.file }, 'cannot write the layer facts cache; layers will be scanned again after a restart');
        }
      } while (this.dirty);
      this.writing = null;
    })();
  }
}
