/**
 * Test-run diagnostics (vitest setupFiles): when CVMFS_THIN_TEST_TRACE names a
 * directory, each test file's worker process writes there which file it runs
 * and when the file's tests are done. A worker killed by a signal or a native
 * crash in the middle of a file never writes `done`: scripts/ci-summary.mjs
 * names such files (with `exit CODE` when the process exited by itself).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';

const dir = process.env['CVMFS_THIN_TEST_TRACE'];
if (dir) {
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${process.pid}-${Date.now()}`);
  // eslint-disable-next-line no-empty-pattern -- vitest passes the suite second, after a fixtures pattern
  beforeAll(({}, suite) => {
    const name = (suite as { filepath?: string; file?: { filepath?: string } }).filepath ?? (suite as { file?: { filepath?: string } }).file?.filepath ?? '?';
    appendFileSync(file, `pid ${process.pid} file ${path.relative(process.cwd(), name)} started ${new Date().toISOString()}\n`);
  });
  afterAll(() => appendFileSync(file, `done ${new Date().toISOString()}\n`));
  process.once('exit', (code) => appendFileSync(file, `exit ${code} ${new Date().toISOString()}\n`));
}
