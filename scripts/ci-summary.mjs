// The CI's last lines, from vitest's JSON report: every test that did not pass
// (failed, or never ran because its worker died) with its file, the files whose
// worker process ended without finishing them (from test/helpers/trace-setup.ts),
// then one line `N passed, N failed`. Exit code 1 when anything did not pass.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const report = process.argv[2] ?? 'vitest.json';
const traceDir = process.env.CVMFS_THIN_TEST_TRACE;
if (!existsSync(report)) {
  console.log('no vitest report');
  console.log('0 passed, 1 failed');
  process.exit(1);
}
const r = JSON.parse(readFileSync(report, 'utf8'));
let passed = 0;
let failed = 0;
const lines = [];
for (const f of r.testResults) {
  const file = path.relative(process.cwd(), f.name);
  for (const a of f.assertionResults) {
    if (a.status === 'passed') passed++;
    else {
      failed++;
      lines.push(`NOT PASSED (${a.status}): ${file} > ${a.fullName}${a.failureMessages?.length ? `\n    ${a.failureMessages[0].split('\n')[0].slice(0, 300)}` : ''}`);
    }
  }
  if (f.status !== 'passed' && f.assertionResults.length === 0) {
    failed++;
    lines.push(`FILE NOT PASSED (${f.status}): ${file} ${(f.message ?? '').split('\n')[0].slice(0, 300)}`);
  }
}
const errors = r.numRuntimeErrors ?? 0;
if (traceDir && existsSync(traceDir)) {
  for (const n of readdirSync(traceDir)) {
    const t = readFileSync(path.join(traceDir, n), 'utf8');
    if (!/^done /m.test(t)) {
      failed++;
      lines.push(`WORKER DIED in the middle of a file (${/^exit /m.test(t) ? 'it exited' : 'no exit handler ran: a signal or a native crash'}): ${t.trim().replace(/\n/g, ' | ')}`);
    }
  }
}
for (const l of lines) console.log(l);
console.log(`${passed} passed, ${failed + errors} failed`);
process.exit(failed + errors > 0 ? 1 : 0);
