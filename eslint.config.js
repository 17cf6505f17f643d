import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules', 'dist', 'build', 'renderer/dist', 'test-artifacts', 'coverage', '.gpu'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: { '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }] },
  },
  { files: ['renderer/**'], languageOptions: { globals: globals.browser } },
  {
    // core/ is shared by the CLI, the server and Electron's main process: it must never reach for the UI layers.
    files: ['core/**'],
    rules: { 'no-restricted-imports': ['error', { paths: ['electron', 'svelte'], patterns: ['**/main/*', '**/renderer/*'] }] },
  },
  {
    // Imports flow one way: the engine knows nothing of the run lifecycle, and the lifecycle nothing of its front doors.
    files: ['core/*.ts', 'core/{model,targets,train,data,store,analysis}/**'],
    rules: { 'no-restricted-imports': ['error', { paths: ['electron', 'svelte'], patterns: layersAbove('runs') }] },
  },
  {
    files: ['core/runs/**'],
    rules: { 'no-restricted-imports': ['error', { paths: ['electron', 'svelte'], patterns: layersAbove('export') }] },
  },
);

/** Import patterns of `layer` and every layer above it. */
function layersAbove(layer) {
  const order = ['runs', 'export', 'jobs', 'service', 'server', 'cli'];
  return [...order.slice(order.indexOf(layer)).map((l) => `**/${l}/*`), '**/main/*', '**/renderer/*'];
}
