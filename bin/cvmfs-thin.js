#!/usr/bin/env node
// Entry point: the compiled CLI in dist/ (built by `npm ci` through the "prepare" script).
import { existsSync } from 'node:fs';
// The layer daemons resolve a thin image's layers 16 at a time on the thread pool (on a cold
// CVMFS client, catalog loads that overlap); libuv's default of 4 threads would serialise them.
// Set before the pool is first used; an explicit UV_THREADPOOL_SIZE wins.
if (['snapshotter', 'graphdriver'].includes(process.argv[2] ?? '')) process.env.UV_THREADPOOL_SIZE ??= '16';
const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('cvmfs-thin: dist/ is missing; run `npm run build` (npm ci does it through "prepare")\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
