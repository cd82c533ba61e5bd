import assert from 'node:assert/strict';
import { test } from 'node:test';
import { baseKeys, filesOf, plan } from './testing.ts';
import type { BuildPlan } from './types.ts';

const keysOf = (result: BuildPlan, stage = result.finalStage): string[] => result.stages[stage]!.steps.map((s) => s.cacheKey);

const FLASK = [
  'FROM cocoon/debian',
  'WORKDIR /app',
  'RUN apt-get update && apt-get install -y python3-flask',
  'COPY requirements.txt .',
  'RUN pip install -r requirements.txt',
  'COPY app.py .',
  'RUN python3 -m compileall .',
  'CMD ["python3", "app.py"]',
].join('\n');

test('changing app.py changes the COPY of app.py and every later key, and nothing before it', () => {
  const before = plan(FLASK, { files: filesOf({ 'app.py': 'v1', 'requirements.txt': 'flask' }) });
  const after = plan(FLASK, { files: filesOf({ 'app.py': 'v2', 'requirements.txt': 'flask' }) });
  const [a, b] = [keysOf(before), keysOf(after)];
  assert.equal(a.length, 6);
  assert.deepEqual(b.slice(0, 4), a.slice(0, 4));
  for (let i = 4; i < 6; i++) assert.notEqual(b[i], a[i], `step ${i + 1}`);
  assert.notEqual(after.imageKey, before.imageKey);
});

test('a changed mode is a changed file', () => {
  const files = filesOf({ 'app.py': 'v1', 'requirements.txt': 'flask' });
  const executable = new Map(files);
  executable.set('app.py', { ...files.get('app.py')!, mode: 0o755 });
  const [a, b] = [keysOf(plan(FLASK, { files })), keysOf(plan(FLASK, { files: executable }))];
  assert.deepEqual(b.slice(0, 4), a.slice(0, 4));
  assert.notEqual(b[4], a[4]);
});

test('a changed ENV changes the keys of later steps only', () => {
  const withEnv = (value: string): string => FLASK.replace('COPY app.py .', `ENV MODE=${value}\nCOPY app.py .`);
  const [a, b] = [keysOf(plan(withEnv('dev'))), keysOf(plan(withEnv('prod')))];
  assert.deepEqual(b.slice(0, 4), a.slice(0, 4));
  assert.notEqual(b[4], a[4]);
  assert.notEqual(b[5], a[5]);
});

test('every metadata instruction feeds the next step key', () => {
  const reference = keysOf(plan(FLASK));
  for (const metadata of ['USER app', 'LABEL a=b', 'EXPOSE 8080', 'CMD ["other"]', 'ENTRYPOINT ["tini"]', 'SHELL ["/bin/bash", "-c"]', 'ARG X=1', 'ENV X=1']) {
    const keys = keysOf(plan(FLASK.replace('RUN pip install', `${metadata}\nRUN pip install`)));
    assert.deepEqual(keys.slice(0, 3), reference.slice(0, 3), metadata);
    for (let i = 3; i < keys.length; i++) assert.notEqual(keys[i], reference[i], metadata);
  }
});

test('a build arg changes keys only from the ARG that declares it', () => {
  const text = FLASK.replace('COPY app.py .', 'ARG VERSION=1\nCOPY app.py .');
  const [a, b] = [keysOf(plan(text)), keysOf(plan(text, { buildArgs: { VERSION: '2' } }))];
  assert.deepEqual(b.slice(0, 4), a.slice(0, 4));
  assert.notEqual(b[4], a[4]);
  assert.deepEqual(keysOf(plan(FLASK, { buildArgs: { UNDECLARED: 'x' } })), keysOf(plan(FLASK)));
});

test('keys ignore line numbers, comments, whitespace in the file list order and the file sizes', () => {
  const reference = plan(FLASK);
  const moved = plan(`# a comment\n\n${FLASK.replace('WORKDIR /app', '# explain\nWORKDIR /app')}`);
  assert.deepEqual(keysOf(moved), keysOf(reference));
  const reordered = new Map([...filesOf({ 'requirements.txt': 'r1', 'Dockerfile': 'df', 'app.py': 'a1' })]);
  assert.deepEqual(keysOf(plan(FLASK, { files: reordered })), keysOf(reference));
  assert.equal(plan(FLASK).imageKey, reference.imageKey);
});

test('keys chain: each step runs on its parent, a stage ends with its last key; keys suit layer file names', () => {
  const result = plan(FLASK);
  const stage = result.stages[0]!;
  assert.equal(stage.steps[0]!.parentKey, baseKeys.debian);
  for (let i = 1; i < stage.steps.length; i++) assert.equal(stage.steps[i]!.parentKey, stage.steps[i - 1]!.cacheKey);
  assert.equal(stage.resultKey, stage.steps.at(-1)!.cacheKey);
  for (const key of keysOf(result)) assert.match(key, /^[0-9a-f]{64}$/);
});

test('the base image key is the root of every key', () => {
  const a = keysOf(plan(FLASK));
  const b = keysOf(plan(FLASK, { baseKeys: { ...baseKeys, debian: 'e'.repeat(64) } }));
  a.forEach((key, i) => assert.notEqual(b[i], key));
  assert.notDeepEqual(keysOf(plan(FLASK.replace('cocoon/debian', 'cocoon/tiny'))), a);
});

test('COPY --from depends on the source stage: a change there changes that COPY, not the steps before it', () => {
  const text = (make: string): string => [
    'FROM cocoon/debian AS build',
    `RUN ${make}`,
    'FROM cocoon/tiny',
    'RUN adduser -D app',
    'COPY --from=build /out /srv/',
    'RUN ls /srv',
    'CMD ["/srv/app"]',
  ].join('\n');
  const [a, b] = [plan(text('make')), plan(text('make release'))];
  assert.notEqual(b.stages[0]!.resultKey, a.stages[0]!.resultKey);
  assert.equal(keysOf(b)[0], keysOf(a)[0]);
  assert.notEqual(keysOf(b)[1], keysOf(a)[1]);
  assert.notEqual(keysOf(b)[2], keysOf(a)[2]);
});

test('a stage FROM another stage starts from its result key', () => {
  const result = plan('FROM cocoon/debian AS base\nRUN make\nFROM base\nRUN make test\nCMD ["x"]');
  assert.equal(result.stages[1]!.parentKey, result.stages[0]!.resultKey);
  assert.equal(result.stages[1]!.steps[0]!.parentKey, result.stages[0]!.resultKey);
  const empty = plan('FROM cocoon/debian AS base\nRUN make\nFROM base\nCMD ["x"]');
  assert.equal(empty.stages[1]!.resultKey, empty.stages[0]!.resultKey);
});

test('the image key covers the runtime config even when no step changes', () => {
  const a = plan(FLASK);
  const b = plan(FLASK.replace('CMD ["python3", "app.py"]', 'CMD ["python3", "-u", "app.py"]'));
  assert.deepEqual(keysOf(b), keysOf(a));
  assert.notEqual(b.imageKey, a.imageKey);
});
