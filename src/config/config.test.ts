import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { loadConfig } from './config.ts';

test('explicit values beat the environment, which beats defaults', () => {
  const env = { COCOON_DATA_DIR: '/var/lib/cocoon', COCOON_ACCELERATOR: 'tcg', HOME: '/home/x' };
  assert.equal(loadConfig({}, env).dataDir, '/var/lib/cocoon');
  assert.equal(loadConfig({ dataDir: '/srv/c' }, env).dataDir, '/srv/c');
  assert.equal(loadConfig({}, {}).accelerator, undefined);
  assert.equal(loadConfig({}, env).accelerator, 'tcg');
});

test('S3 settings come from COCOON_S3_*', () => {
  const config = loadConfig({}, { COCOON_S3_ENDPOINT: 'http://127.0.0.1:9000', COCOON_S3_FORCE_PATH_STYLE: 'true' });
  assert.deepEqual(config.s3, { endpoint: 'http://127.0.0.1:9000', forcePathStyle: true });
  assert.ok(Object.isFrozen(config));
});

test('a bad value names its variable', () => {
  assert.throws(() => loadConfig({}, { COCOON_ACCELERATOR: 'hvf' }), (e) => isAppError(e, 'config.invalid') && /COCOON_ACCELERATOR/.test(e.message));
  assert.throws(() => loadConfig({}, { COCOON_S3_ENDPOINT: 'not a url' }), (e) => isAppError(e, 'config.invalid') && /COCOON_S3_ENDPOINT/.test(e.message));
});
