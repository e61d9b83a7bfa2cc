import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // daemons, mounts and real registries: keep files from fighting over CPU and ports
    fileParallelism: false,
    pool: 'forks',
  },
});
