import { defineConfig } from 'vitest/config';

// Tests check values, never speed: a slow or busy machine must not fail a
// simulation-heavy test (vitest's default is 5 s per test and per hook).
export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
