/** `npm run docs:errors`: writes docs/errors.md from the error registry. */
import { writeFile } from 'node:fs/promises';
import { renderErrorsDoc } from '../src/errors/errors-doc.ts';

await writeFile(new URL('../docs/errors.md', import.meta.url), renderErrorsDoc());
