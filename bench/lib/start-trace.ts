/**
 * Where a thin start's time goes: on a node whose snapshotter runs at --log-level debug (each
 * answered Snapshots call logs an `rpc` line with its method, the time it reached the handler
 * and its duration), one thin pull+run and one more run; per ctr command, the snapshotter's
 * calls counted and summed per method, and for a run containerd's shim timeline from its
 * info log (ctr started → shim started → shim gone → ctr done).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Node } from './start.js';
import { SN, sh, timed } from './start.js';

/** Pause after each command so that containerd's garbage collection of a `run --rm` is not counted in the next one. */
const SETTLE_MS = 1500;

interface Calls {
  n: number;
  ms: number;
  failed: number;
}
export interface Phase {
  name: string;
  wallMs: number;
  /** calls that reached the snapshotter while the command ran */
  calls: Map<string, Calls>;
  /** calls after it returned, before the next command (containerd's garbage collection: Remove, Cleanup) */
  after: Map<string, Calls>;
  /** a run: ms from ctr's start to the shim's start, the shim's life (runc create/start, the process, its exit), shim gone to ctr done */
  shim?: [number, number, number];
}

/** Thin `ctr image import`, `ctr run --rm`, and a second `ctr run --rm`, each a phase with the calls that started in it. */
export async function traceOf(node: Node, archive: string, image: string, cmd: string[]): Promise<Phase[]> {
  const { ctd } = node;
  await sh('sync', []);
  const id = `trace-${process.pid}`;
  const steps: [string, string | undefined, string[]][] = [
    ['ctr image import', undefined, ['image', 'import', '--snapshotter', SN, archive]],
    ['ctr run --rm', `${id}-1`, ['run', '--rm', '--snapshotter', SN, image, `${id}-1`, ...cmd]],
    ['ctr run --rm, again', `${id}-2`, ['run', '--rm', '--snapshotter', SN, image, `${id}-2`, ...cmd]],
  ];
  const bounds: [string, number, number, string | undefined][] = [];
  for (const [name, container, args] of steps) {
    const t0 = performance.timeOrigin + performance.now();
    const [s] = await timed(() => ctd.ctr(args, { timeoutMs: 600_000 }));
    bounds.push([name, t0, s * 1000, container]);
    await sleep(SETTLE_MS);
  }
  const lines = node.sn
    .log()
    .split('\n')
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as { msg?: string; method?: string; at?: number; ms?: number }];
      } catch {
        return [];
      }
    })
    .filter((l) => (l.msg === 'rpc' || l.msg === 'rpc failed') && l.method && l.at);
  const ctdLog = ctd.log();
  /** when containerd logged `msg` (a line of its own, not one quoted in another) ending with `tail` */
  const when = (msg: string, tail: string) => {
    const m = new RegExp(`^time="([^"]+)" level=\\w+ msg="${msg}"[^\\n]*${tail}$`, 'm').exec(ctdLog);
    return m ? Date.parse(m[1]!.replace(/(\.\d{3})\d*Z$/, '$1Z')) : undefined;
  };
  return bounds.map(([name, t0, wallMs, container], i) => {
    const end = i + 1 < bounds.length ? bounds[i + 1]![1] : Infinity;
    const calls = new Map<string, Calls>();
    const after = new Map<string, Calls>();
    for (const l of lines) {
      if (l.at! < t0 || l.at! >= end) continue;
      const m = l.at! < t0 + wallMs ? calls : after;
      const c = m.get(l.method!) ?? { n: 0, ms: 0, failed: 0 };
      c.n++;
      c.ms += l.ms ?? 0;
      if (l.msg === 'rpc failed') c.failed++;
      m.set(l.method!, c);
    }
    const [up, gone] = container ? [when('starting signal loop', `/${container} pid=\\d+ runtime=\\S+`), when('shim disconnected', ` id=${container}`)] : [];
    return { name, wallMs, calls, after, ...(up && gone ? { shim: [up - t0, gone - up, t0 + wallMs - gone] as [number, number, number] } : {}) };
  });
}

const med = (xs: number[]) => {
  const v = [...xs].sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
};
/** Phases of several traces of the same thing: per method, the median count and time (0 where a trace lacks it). */
export function medianPhases(traces: Phase[][]): Phase[] {
  const calls = (ms: Map<string, Calls>[]) =>
    new Map(
      [...new Set(ms.flatMap((m) => [...m.keys()]))].map((k) => [
        k,
        { n: med(ms.map((m) => m.get(k)?.n ?? 0)), ms: med(ms.map((m) => m.get(k)?.ms ?? 0)), failed: med(ms.map((m) => m.get(k)?.failed ?? 0)) },
      ]),
    );
  return traces[0]!.map((p, i) => {
    const ps = traces.map((t) => t[i]!);
    const shims = ps.flatMap((x) => (x.shim ? [x.shim] : []));
    return {
      name: p.name,
      wallMs: med(ps.map((x) => x.wallMs)),
      calls: calls(ps.map((x) => x.calls)),
      after: calls(ps.map((x) => x.after)),
      ...(shims.length ? { shim: [0, 1, 2].map((j) => med(shims.map((x) => x[j]!))) as [number, number, number] } : {}),
    };
  });
}

const list = (m: Map<string, Calls>) =>
  [...m]
    .sort((a, b) => b[1].ms - a[1].ms)
    .map(([k, c]) => `${k} ${c.n}${c.failed ? ` (${c.failed} failed)` : ''} ${c.ms.toFixed(1)} ms`)
    .join(', ') || 'none';
const sum = (m: Map<string, Calls>) => [...m.values()].reduce((a, c) => a + c.ms, 0);

export function printTrace(title: string, phases: Phase[], out: (s: string) => void): void {
  out(`\nwhere the time goes, ${title} (snapshotter at --log-level debug: calls per command, count and total time; medians):`);
  for (const p of phases) {
    out(`  ${p.name.padEnd(20)} wall ${p.wallMs.toFixed(0).padStart(5)} ms, in the snapshotter ${sum(p.calls).toFixed(1).padStart(6)} ms: ${list(p.calls)}`);
    if (p.shim)
      out(
        `  ${''.padEnd(20)} containerd: ctr → shim started ${p.shim[0].toFixed(0)} ms, shim (runc create+start, the command, exit) ${p.shim[1].toFixed(0)} ms, shim gone → ctr done ${p.shim[2].toFixed(0)} ms`,
      );
    if (p.after.size) out(`  ${''.padEnd(20)} after it (garbage collection, not in the wall time): ${list(p.after)}`);
  }
}
