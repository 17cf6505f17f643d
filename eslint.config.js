import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

// Which folder may import which is checked by scripts/check-imports.ts (npm run lint), circles included.
export default tseslint.config(
  { ignores: ['node_modules', 'dist', 'build', 'renderer/dist', 'test-artifacts', 'coverage', '.gpu'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: { '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }] },
  },
  { files: ['renderer/**'], languageOptions: { globals: globals.browser } },
);
