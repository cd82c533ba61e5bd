import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isRemoteUri, parseAllowedPorts, parseBuildArg, parseCodeArtifact, parseImageIdentifier, parseInteger, parseJsonObject, UsageError } from './args.ts';

test('--code-artifact: uri=… or a bare URI; other keys are usage errors', () => {
  assert.equal(parseCodeArtifact('uri=./app.zip'), './app.zip');
  assert.equal(parseCodeArtifact('uri=s3://b/k=v.zip'), 's3://b/k=v.zip');
  assert.equal(parseCodeArtifact('./app'), './app');
  for (const bad of ['uri=', 'url=./app.zip', '']) assert.throws(() => parseCodeArtifact(bad), UsageError, bad);
});

test('remote URIs go to the server, local paths and file:// are uploaded', () => {
  assert.equal(isRemoteUri('s3://bucket/key.zip'), true);
  for (const local of ['./app.zip', '/abs/app', 'file:///tmp/app.zip', 'app-dir', 'C:\\app.zip']) assert.equal(isRemoteUri(local), false, local);
});

test('--image-identifier: NAME, NAME:VERSION, the arn', () => {
  assert.deepEqual(parseImageIdentifier('web'), { name: 'web' });
  assert.deepEqual(parseImageIdentifier('web:2.0'), { name: 'web', version: '2.0' });
  assert.deepEqual(parseImageIdentifier('cocoon:image:web:1.0'), { name: 'web', version: '1.0' });
  for (const bad of ['', ':1.0', 'web:', 'a:b:c']) assert.throws(() => parseImageIdentifier(bad), UsageError, bad);
});

test('JSON objects, integers and build args', () => {
  assert.deepEqual(parseJsonObject('--idle-policy', '{"maxIdleDurationSeconds":900}'), { maxIdleDurationSeconds: 900 });
  for (const bad of ['{', '[]', '1', 'null']) assert.throws(() => parseJsonObject('--idle-policy', bad), /--idle-policy/);
  assert.equal(parseInteger('--n', '300'), 300);
  for (const bad of ['-1', '1.5', '', 'x', '99999999999']) assert.throws(() => parseInteger('--n', bad), UsageError, bad);
  assert.deepEqual(parseBuildArg('B=x=y', { A: '1' }), { A: '1', B: 'x=y' });
  assert.throws(() => parseBuildArg('=x'), UsageError);
});

test('--allowed-ports: the AWS shorthand (port=, fromPort=,toPort=, all=true) or JSON; mistakes are usage errors', () => {
  assert.deepEqual(parseAllowedPorts('port=8080'), [{ port: 8080 }]);
  assert.deepEqual(parseAllowedPorts('fromPort=8000,toPort=8100'), [{ fromPort: 8000, toPort: 8100 }]);
  assert.deepEqual(parseAllowedPorts('toPort=8100,fromPort=8000'), [{ fromPort: 8000, toPort: 8100 }]);
  assert.deepEqual(parseAllowedPorts('all=true'), [{ all: true }]);
  assert.deepEqual(parseAllowedPorts('{"port":1}'), [{ port: 1 }]);
  assert.deepEqual(parseAllowedPorts('[{"port":1},{"fromPort":2,"toPort":3}]'), [{ port: 1 }, { fromPort: 2, toPort: 3 }]);
  const bad = [
    '', '8080', 'port=', 'port=0', 'port=65536', 'port=80.5', 'port=-1', 'port=0x50', 'Port=80', 'port=80,port=81', 'port=80,toPort=90',
    'fromPort=8000', 'toPort=8100', 'fromPort=1,toPort=2,port=3', 'all=false', 'all=1', 'all=true,port=80', 'port=80,', 'ports=80',
    '{', '[1]', '["port=80"]', '{"port":1', 'null',
  ];
  for (const value of bad) assert.throws(() => parseAllowedPorts(value), (error: unknown) => error instanceof UsageError && error.message.startsWith('--allowed-ports'), value);
});
