/** Writes docs/metrics.md from src/core/telemetry/metrics.ts (test/core/metrics.test.ts checks it is current). */
import { writeFileSync } from 'node:fs';
import { metricsDoc } from '../src/core/telemetry/metrics-doc.js';

writeFileSync(new URL('../docs/metrics.md', import.meta.url), metricsDoc());
