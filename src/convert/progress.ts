/**
 * Per-layer progress on a terminal (bytes downloaded, files written); nothing
 * at all when stderr is not a TTY (pipes, CI logs) or with --quiet.
 */
import { formatBytes } from './util.js';

export interface Progress {
  layerStart(key: string, label: string, totalBytes: number): void;
  layerBytes(key: string, bytes: number): void;
  layerFiles(key: string, files: number): void;
  layerDone(key: string, status: string): void;
  /** A line printed above the live area. */
  message(text: string): void;
  close(): void;
}

const nullProgress: Progress = {
  layerStart() {},
  layerBytes() {},
  layerFiles() {},
  layerDone() {},
  message() {},
  close() {},
};

interface Row {
  label: string;
  total: number;
  bytes: number;
  files: number;
  start: number;
}

class TtyProgress implements Progress {
  private readonly rows = new Map<string, Row>();
  private drawn = 0;
  private timer: NodeJS.Timeout | undefined;
  private dirty = false;

  constructor(private readonly out: NodeJS.WriteStream) {}

  private schedule(): void {
    this.dirty = true;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.dirty) this.render();
    }, 150);
    this.timer.unref();
  }

  private line(r: Row): string {
    const pct = r.total > 0 ? ` ${Math.min(100, Math.floor((r.bytes * 100) / r.total))}%` : '';
    const secs = (Date.now() - r.start) / 1000;
    const rate = secs > 0.5 ? ` ${formatBytes(Math.round(r.bytes / secs))}/s` : '';
    const text = `  ${r.label}  ${formatBytes(r.bytes)}/${formatBytes(r.total)}${pct}${rate}  ${r.files} entries`;
    const cols = this.out.columns || 100;
    return text.length > cols - 1 ? text.slice(0, cols - 2) + '…' : text;
  }

  private clear(): string {
    let s = '';
    for (let i = 0; i < this.drawn; i++) s += '\x1b[1A\x1b[2K';
    this.drawn = 0;
    return s;
  }

  private render(extra = ''): void {
    this.dirty = false;
    let s = this.clear() + extra;
    for (const r of this.rows.values()) {
      s += this.line(r) + '\n';
      this.drawn++;
    }
    this.out.write(s);
  }

  layerStart(key: string, label: string, totalBytes: number): void {
    this.rows.set(key, { label, total: totalBytes, bytes: 0, files: 0, start: Date.now() });
    this.schedule();
  }
  layerBytes(key: string, bytes: number): void {
    const r = this.rows.get(key);
    if (r) {
      r.bytes = bytes;
      this.schedule();
    }
  }
  layerFiles(key: string, files: number): void {
    const r = this.rows.get(key);
    if (r) {
      r.files = files;
      this.schedule();
    }
  }
  layerDone(key: string, status: string): void {
    const r = this.rows.get(key);
    if (!r) return;
    this.rows.delete(key);
    const secs = ((Date.now() - r.start) / 1000).toFixed(1);
    this.render(`  ${r.label}  ${status}  ${formatBytes(r.total)}, ${r.files} entries, ${secs} s\n`);
  }
  message(text: string): void {
    this.render(`${text}\n`);
  }
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.out.write(this.clear());
  }
}

export function createProgress(enabled: boolean, out: NodeJS.WriteStream = process.stderr): Progress {
  return enabled && out.isTTY ? new TtyProgress(out) : nullProgress;
}
