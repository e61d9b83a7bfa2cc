// ESLint (flat config): typescript-eslint's recommended rules over everything we write;
// generated protobuf code is left out. `npm run lint` (CI runs it; scripts/check.sh).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'src/snapshotter/proto/', 'src/csi/proto/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // a daemon handle read by closures made before it is assigned stays `let`
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // refusing control characters in names and paths is what those patterns are for
      'no-control-regex': 'off',
      // `const self = this` for async generators, which cannot be arrow functions
      '@typescript-eslint/no-this-alias': ['error', { allowedNames: ['self'] }],
    },
  },
  {
    // tests read parsed TOML/JSON documents freely, and drain streams with generators that never yield
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off', 'require-yield': 'off' },
  },
);
