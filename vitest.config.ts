import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // diagnostics of a worker that dies (CVMFS_THIN_TEST_TRACE; see scripts/ci-summary.mjs)
    setupFiles: ['test/helpers/trace-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // daemons, mounts and real registries: keep files from fighting over CPU and ports
    fileParallelism: false,
    pool: 'forks',
  },
});
