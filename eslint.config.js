import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules', 'dist', 'build', 'renderer/dist', 'test-artifacts', 'coverage'] },
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
);
