#!/usr/bin/env node
// Entry point: the compiled CLI in dist/ (built by `npm ci` through the "prepare" script).
import { existsSync } from 'node:fs';
const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write('cvmfs-thin: dist/ is missing; run `npm run build` (npm ci does it through "prepare")\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
