import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { renderErrorsDoc } from './errors-doc.ts';

test('docs/errors.md lists exactly the registry (run `npm run docs:errors` after adding a code)', async () => {
  const documented = await readFile(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  assert.equal(documented, renderErrorsDoc());
});
