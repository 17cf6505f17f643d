import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules', 'dist', 'out', 'coverage'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', setImmediate: 'readonly', performance: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      // core/ is shared by the CLI, the server and Electron's main process: it must never reach for the UI layers.
      'no-restricted-imports': ['error', { paths: ['electron', 'svelte'], patterns: ['../main/*', '../renderer/*'] }],
    },
  },
);
