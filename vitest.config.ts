import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Our sgemm on every machine, so that results do not depend on which BLAS is installed: test/blas.test.ts tests
    // the system BLAS's route and its measurement.
    env: { LOCALMIM_GEMM: 'own' },
    // One file at a time: the training tests are CPU-bound, and two at once on 2 cores starve the runner's RPC.
    fileParallelism: false,
    // Prints, after the run, which system components were missing, the tests they skipped and what installs them.
    globalSetup: ['test/support/requirements-summary.ts'],
  },
});
