/**
 * Docker's own graph driver suite (moby 20.10 `daemon/graphdriver/graphtest`,
 * the 6 tests + 9 benchmarks overlay2's package runs) against `cvmfs-thin
 * graphdriver`, loaded through moby's plugin store and graph driver plugin
 * proxy exactly as dockerd 20.10 loads a legacy plugin
 * (test/graphtest/suite), plus one case of ours for naive diffs against a
 * layer other than the parent (suite/naive_test.go). The Go binary is built by test/graphtest/build.sh
 * (GRAPHTEST_BIN overrides /tmp/graphtest/bin/graphtest.test); this file builds
 * it when it is missing or older than the suite's sources. Benchmarks run once
 * each (-test.benchtime 1x) as functional cases.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needs } from '../helpers/env.js';
import { type Plugin, removeTestDir, shortTempDir, startPlugin } from '../graphdriver/harness.js';

const HERE = import.meta.dirname;
const BIN = process.env['GRAPHTEST_BIN'] ?? '/tmp/graphtest/bin/graphtest.test';
const GRAPHTEST_SRC = '/usr/share/gocode/src/github.com/docker/docker/daemon/graphdriver/graphtest';

const TESTS = ['CreateEmpty', 'CreateBase', 'CreateSnap', '128LayerRead', 'DiffApply10Files', 'Changes'];
/** Ours, in test/graphtest/suite/naive_test.go: Changes/DiffSize/Diff against a grandparent and "", moby's archive package as the reference. */
const EXTRA = ['NaiveDiffOtherParent'];
const BENCHMARKS = [
  'Exists',
  'GetEmpty',
  'DiffBase',
  'DiffSmallUpper',
  'Diff10KFileUpper',
  'Diff10KFilesBottom',
  'DiffApply100',
  'Diff20Layers',
  'Read20Layers',
];

function skipReason(): string | null {
  const r = needs({ root: true, binaries: ['go'] });
  if (r !== null) return r;
  if (!existsSync(BIN) && !existsSync(GRAPHTEST_SRC)) {
    const reason = `needs moby's Go sources (apt-get install golang-github-docker-docker-dev; scripts/setup.sh does it)`;
    process.stderr.write(`[skip] ${reason}\n`);
    return reason;
  }
  return null;
}

/** True when the binary is missing or older than a file of the suite or build.sh. */
function stale(): boolean {
  if (!existsSync(BIN)) return true;
  const built = statSync(BIN).mtimeMs;
  const srcs = [path.join(HERE, 'build.sh'), ...readdirSync(path.join(HERE, 'suite')).map((f) => path.join(HERE, 'suite', f))];
  return srcs.some((f) => statSync(f).mtimeMs > built);
}

async function runGo(file: string, args: string[], env: NodeJS.ProcessEnv, timeout: number): Promise<{ code: number; output: string }> {
  try {
    const r = await promisify(execFile)(file, args, { env, cwd: '/tmp', maxBuffer: 64 << 20, timeout });
    return { code: 0, output: r.stdout + r.stderr };
  } catch (e) {
    const x = e as { code?: number | string; stdout?: string; stderr?: string; message?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, output: `${x.stdout ?? ''}${x.stderr ?? ''}\n[${x.message ?? ''}]` };
  }
}

describe.skipIf(skipReason())("moby's graphtest suite against cvmfs-thin graphdriver through moby's plugin proxy", () => {
  const name = `cvmfs-graphtest-${process.pid}`;
  const results = new Map<string, string>();
  let dir = '';
  let plugin: Plugin | undefined;
  let output = '';

  beforeAll(async () => {
    if (stale() && !process.env['GRAPHTEST_BIN']) {
      const b = await runGo('sh', [path.join(HERE, 'build.sh')], process.env, 600_000);
      if (b.code !== 0) throw new Error(`test/graphtest/build.sh failed:\n${b.output}`);
    }
    dir = shortTempDir('cvmfs-graphtest-');
    const tmp = path.join(dir, 'tmp');
    mkdirSync(tmp);
    plugin = await startPlugin(name, ['--state-dir', path.join(dir, 'state')]);
    const env = { ...process.env, TMPDIR: tmp };
    const common = ['-plugin', name, '-test.v', '-test.timeout', '600s', '-test.cpu', '1'];
    // two runs: a Go test binary does not run benchmarks after a failed test
    const tests = await runGo(BIN, [...common, '-test.run', '.', '-test.bench', '^$'], env, 660_000);
    const benches = await runGo(BIN, [...common, '-test.run', '^$', '-test.bench', '.', '-test.benchtime', '1x'], env, 660_000);
    output = `${tests.output}\n[exit ${tests.code}]\n${benches.output}\n[exit ${benches.code}]\n`;
    for (const m of output.matchAll(/^--- (PASS|FAIL|SKIP): ((?:Test|Benchmark)\w+)/gm)) results.set(m[2]!, m[1]!);
    for (const m of output.matchAll(/^(Benchmark\w+)\s+1\s+\d+ ns\/op/gm)) if (!results.has(m[1]!)) results.set(m[1]!, 'PASS');
  }, 1_800_000);

  afterAll(async () => {
    await plugin?.stop();
    if (dir) removeTestDir(dir);
  }, 60_000);

  /** The case's own block of Go output (from its start line to its result line), plus the plugin's log tail. */
  const failureLog = (caseName: string) => {
    const startRe = caseName.startsWith('Test') ? new RegExp(`^=== RUN   ${caseName}$`, 'm') : new RegExp(`^${caseName}$`, 'm');
    const start = output.search(startRe);
    const end = start < 0 ? -1 : output.indexOf(`--- FAIL: ${caseName}`, start);
    const go = start < 0 ? output.slice(-6000) : output.slice(start, end < 0 ? start + 6000 : output.indexOf('\n', end) + 1);
    return `${caseName}: ${results.get(caseName) ?? 'no result'}\n--- Go output ---\n${go.slice(0, 8000)}\n--- plugin log (tail) ---\n${plugin?.output().slice(-3000) ?? ''}`;
  };

  it.each(TESTS)('graphtest %s', (c) => {
    expect(results.get(`Test${c}`), failureLog(`Test${c}`)).toBe('PASS');
  });
  it.each(EXTRA)('%s (against archive.ChangesDirs / ChangesSize on the mounted views)', (c) => {
    expect(results.get(`Test${c}`), failureLog(`Test${c}`)).toBe('PASS');
  });
  it.each(BENCHMARKS)('graphtest benchmark %s (one iteration)', (c) => {
    expect(results.get(`Benchmark${c}`), failureLog(`Benchmark${c}`)).toBe('PASS');
  });
  it('ran every case through the plugin: no skip, setup/teardown passed, one Init per driver instance under the suite home', () => {
    expect(
      [...results.entries()].filter(([, v]) => v === 'SKIP'),
      output.slice(-6000),
    ).toEqual([]);
    expect(results.get('TestSetup'), failureLog('TestSetup')).toBe('PASS');
    expect(results.get('TestTeardown'), failureLog('TestTeardown')).toBe('PASS');
    expect(results.size).toBe(TESTS.length + EXTRA.length + BENCHMARKS.length + 2);
    const homes = [...plugin!.output().matchAll(/"home":"([^"]+)"[^\n]*"msg":"GraphDriver.Init"/g)].map((m) => m[1]!);
    // the tests share one driver (Setup .. Teardown); each benchmark gets its own
    expect(homes).toHaveLength(1 + BENCHMARKS.length);
    for (const h of homes) expect(h).toMatch(new RegExp(`^${dir}/tmp/docker-graphtest-\\d+/graphtest-proxy/${name}$`));
  });
});
