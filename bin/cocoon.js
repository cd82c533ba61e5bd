#!/usr/bin/env node
// The `cocoon` CLI: registers tsx's loader (the CLI is TypeScript), then runs it.
import('tsx/esm/api').then(({ register }) => {
  register();
  return import('../src/cli/main.ts');
});
