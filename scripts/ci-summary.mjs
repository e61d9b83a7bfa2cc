// The CI's last lines, from vitest's JSON report: every test that did not pass
// (failed, or never ran because its worker died) with its file, the files whose
// worker process died in the middle (from test/helpers/trace-setup.ts), then one
// line `N passed, N failed`. Exit code 1 when anything did not pass.
//
//   node scripts/ci-summary.mjs --dead vitest.json      the files whose worker died, one per line
//   node scripts/ci-summary.mjs vitest.json [rerun.json] the summary; the results of files run
//                                                        again (rerun.json) replace theirs
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const deadOnly = args[0] === '--dead';
if (deadOnly) args.shift();
const [report = 'vitest.json', rerun] = args;
const traceDir = process.env.CVMFS_THIN_TEST_TRACE;

/** Trace files of workers that started a file and never finished it: [file, trace text]. */
function deadWorkers() {
  if (!traceDir || !existsSync(traceDir)) return [];
  const out = [];
  for (const e of readdirSync(traceDir, { withFileTypes: true })) {
    if (!e.isFile()) continue;
    const t = readFileSync(path.join(traceDir, e.name), 'utf8');
    if (/^done /m.test(t)) continue;
    out.push([/ file (\S+) started/.exec(t)?.[1] ?? '?', t.trim().replace(/\n/g, ' | ')]);
  }
  return out;
}

if (deadOnly) {
  for (const [file] of deadWorkers()) console.log(file);
  process.exit(0);
}
if (!existsSync(report)) {
  console.log('no vitest report');
  console.log('0 passed, 1 failed');
  process.exit(1);
}
const load = (f) => JSON.parse(readFileSync(f, 'utf8')).testResults.map((r) => ({ ...r, name: path.relative(process.cwd(), r.name) }));
const main = JSON.parse(readFileSync(report, 'utf8'));
let results = load(report);
const lines = [];
const dead = deadWorkers();
for (const [file, trace] of dead)
  lines.push(`WORKER DIED in the middle of ${file} (${/^exit /m.test(trace) ? 'it exited' : 'no exit handler ran: a signal or a native crash'}): ${trace}`);
if (rerun && existsSync(rerun)) {
  const again = load(rerun);
  const rerunFiles = new Set(again.map((r) => r.name));
  results = [...results.filter((r) => !rerunFiles.has(r.name)), ...again];
  for (const f of rerunFiles) {
    const r = again.find((x) => x.name === f);
    const ok = r.assertionResults.length > 0 && r.assertionResults.every((a) => a.status === 'passed');
    lines.push(`RUN AGAIN after its worker died: ${f}: ${ok ? 'passed' : 'NOT passed'}`);
  }
}
let passed = 0;
let failed = 0;
for (const f of results) {
  for (const a of f.assertionResults) {
    if (a.status === 'passed') passed++;
    else {
      failed++;
      lines.push(
        `NOT PASSED (${a.status}): ${f.name} > ${a.fullName}${a.failureMessages?.length ? `\n    ${a.failureMessages[0].split('\n')[0].slice(0, 300)}` : ''}`,
      );
    }
  }
  if (f.status !== 'passed' && f.assertionResults.length === 0) {
    failed++;
    lines.push(`FILE NOT PASSED (${f.status}): ${f.name} ${(f.message ?? '').split('\n')[0].slice(0, 300)}`);
  }
}
// unhandled errors of the main run count, unless they were a dead worker whose file passed when run again
const errors = rerun && dead.length ? 0 : (main.numRuntimeErrors ?? 0);
for (const l of lines) console.log(l);
console.log(`${passed} passed, ${failed + errors} failed`);
process.exit(failed + errors > 0 ? 1 : 0);
