import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_PATH } from './bases.ts';
import { describeStep } from './describe.ts';
import { baseKeys, filesOf, finalSteps, plan, step } from './testing.ts';

const CMD = 'CMD ["python3", "app.py"]';

test('RUN: shell form goes to the SHELL as one string, exec form is kept, continuations are joined', () => {
  const result = plan([
    'FROM cocoon/debian:bookworm',
    'RUN apt-get update && \\',
    '    # a comment inside the continuation',
    '    apt-get install -y python3-flask   # stays: the shell sees it',
    'RUN ["echo", "hello world", "$HOME"]',
    'SHELL ["/bin/bash", "-eu", "-c"]',
    'RUN echo $HOME',
    CMD,
  ].join('\n'));
  assert.deepEqual(step(result, 0, 'run').argv, ['/bin/sh', '-c', 'apt-get update &&     apt-get install -y python3-flask   # stays: the shell sees it']);
  assert.equal(step(result, 0, 'run').line, 2);
  assert.deepEqual(step(result, 1, 'run').argv, ['echo', 'hello world', '$HOME']);
  assert.deepEqual(step(result, 2, 'run').argv, ['/bin/bash', '-eu', '-c', 'echo $HOME']);
  assert.equal(step(result, 2, 'run').line, 7);
});

test('RUN here-documents: alone, the body is the command; after a command, the shell gets both', () => {
  const result = plan([
    'FROM cocoon/tiny',
    'RUN <<EOF',
    'echo one',
    'echo $HOME',
    'EOF',
    'RUN python3 <<"PY" > /out.txt',
    'print(1)',
    'PY',
    'RUN <<-EOT',
    '\techo tabbed',
    '\tEOT',
    CMD,
  ].join('\n'));
  assert.deepEqual(step(result, 0, 'run').argv, ['/bin/sh', '-c', 'echo one\necho $HOME\n']);
  assert.deepEqual(step(result, 1, 'run').argv, ['/bin/sh', '-c', 'python3 <<"PY" > /out.txt\nprint(1)\nPY']);
  assert.equal(step(result, 1, 'run').line, 6);
  assert.deepEqual(step(result, 2, 'run').argv, ['/bin/sh', '-c', 'echo tabbed\n']);
});

test('RUN gets ENV and the ARGs in scope as its environment, with the WORKDIR and USER in effect', () => {
  const result = plan([
    'FROM cocoon/debian',
    'ARG VERSION=1.0',
    'ENV APP_HOME=/srv/app MODE=prod',
    'ARG MODE=ignored-because-env-wins',
    'WORKDIR $APP_HOME',
    'USER app',
    'RUN ./install.sh $VERSION',
    CMD,
  ].join('\n'));
  const run = step(result, 1, 'run');
  assert.deepEqual(run.env, { APP_HOME: '/srv/app', MODE: 'prod', PATH: DEFAULT_PATH, VERSION: '1.0' });
  assert.equal(run.cwd, '/srv/app');
  assert.equal(run.user, 'app');
  assert.deepEqual(run.argv, ['/bin/sh', '-c', './install.sh $VERSION'], 'RUN text is not substituted');
  assert.deepEqual(result.runtime.env, { APP_HOME: '/srv/app', MODE: 'prod', PATH: DEFAULT_PATH }, 'ARGs do not persist');
});

test('ENV: both forms, quotes, and values that see the state before the instruction', () => {
  const result = plan([
    'FROM cocoon/debian',
    'ENV A=1',
    'ENV A=2 B=$A C="with space" D=\'$A\' E=a\\ b',
    'ENV OLD the rest of the line',
    'ENV PATH=/opt/venv/bin:$PATH',
    CMD,
  ].join('\n'));
  assert.deepEqual(result.runtime.env, {
    A: '2', B: '1', C: 'with space', D: '$A', E: 'a b', OLD: 'the rest of the line', PATH: `/opt/venv/bin:${DEFAULT_PATH}`,
  });
});

test('ARG scoping: global ARGs reach FROM only; a stage sees them after redeclaring', () => {
  const text = [
    'ARG BASE=cocoon/debian',
    'ARG TAG=bookworm',
    'ARG SHARED=global',
    'FROM ${BASE}:${TAG}',
    'RUN echo 1',
    'ENV SEEN_BEFORE="[${TAG}]"',
    'ARG TAG',
    'ARG OWN=own-default',
    'ENV SEEN_AFTER="[${TAG}]" OWN_VALUE=$OWN',
    CMD,
  ].join('\n');
  const result = plan(text);
  assert.deepEqual(result.stages[0]!.base, { kind: 'base-image', name: 'debian' });
  assert.equal(result.runtime.env.SEEN_BEFORE, '[]');
  assert.equal(result.runtime.env.SEEN_AFTER, '[bookworm]');
  assert.equal(result.runtime.env.OWN_VALUE, 'own-default');
  assert.equal(step(result, 0, 'run').env.SHARED, undefined);

  const overridden = plan(text.replace('ENV SEEN_AFTER', 'ARG SHARED\nENV SHARED=$SHARED SEEN_AFTER'), {
    buildArgs: { OWN: 'from-cli', SHARED: 'cli', UNUSED: 'x' },
  });
  assert.equal(overridden.runtime.env.OWN_VALUE, 'from-cli');
  assert.equal(overridden.runtime.env.SHARED, 'cli');
  assert.deepEqual(overridden.warnings, ['build arg UNUSED is not declared by any ARG and is ignored']);
});

test('build args override global ARGs used in FROM', () => {
  const result = plan('ARG BASE=cocoon/debian\nFROM $BASE\n' + CMD, { buildArgs: { BASE: 'cocoon/tiny' } });
  assert.deepEqual(result.stages[0]!.base, { kind: 'base-image', name: 'tiny' });
});

test('an ARG without a value stays unset; platform ARGs are predefined', () => {
  const result = plan([
    'FROM cocoon/debian',
    'ARG NOVALUE',
    'ARG TARGETARCH',
    'ENV X=${NOVALUE:-unset} ARCH=$TARGETARCH',
    'RUN true',
    CMD,
  ].join('\n'));
  assert.equal(result.runtime.env.X, 'unset');
  assert.equal(result.runtime.env.ARCH, 'amd64');
  assert.equal(step(result, 0, 'run').env.NOVALUE, undefined);
});

test('substitution applies to COPY, WORKDIR, USER, EXPOSE, LABEL and --chown, but not to CMD', () => {
  const files = filesOf({ 'app.py': 'a', 'conf/prod.ini': 'p' });
  const result = plan([
    'FROM cocoon/debian',
    'ARG ENVIRONMENT=prod',
    'ENV DIR=/srv PORT=8080 OWNER=app',
    'WORKDIR ${DIR}/app',
    'COPY --chown=$OWNER:$OWNER conf/${ENVIRONMENT}.ini ${DIR}/conf/',
    'USER ${OWNER}',
    'EXPOSE $PORT ${ADMIN_PORT:-9090}/tcp',
    'LABEL "version"="${ENVIRONMENT}-1" \'raw\'=\'$DIR\'',
    'CMD echo $PORT',
  ].join('\n'), { files });
  assert.equal(step(result, 0, 'workdir').path, '/srv/app');
  const copy = step(result, 1, 'copy');
  assert.deepEqual(copy.entries, [{ source: 'conf/prod.ini', dest: '/srv/conf/prod.ini' }]);
  assert.equal(copy.chown, 'app:app');
  assert.equal(result.runtime.user, 'app');
  assert.deepEqual(result.runtime.exposedPorts, [8080, 9090]);
  assert.deepEqual(result.runtime.labels, { version: 'prod-1', raw: '$DIR' });
  assert.deepEqual(result.runtime.argv, ['/bin/sh', '-c', 'echo $PORT']);
});

test('WORKDIR: relative to the previous one, a step that creates it, owned by the USER', () => {
  const result = plan('FROM cocoon/debian\nWORKDIR /srv\nUSER 1000:1000\nWORKDIR app/../web\n' + CMD);
  assert.deepEqual(finalSteps(result).map((s) => s.kind), ['workdir', 'workdir']);
  assert.equal(step(result, 0, 'workdir').path, '/srv');
  assert.equal(step(result, 0, 'workdir').user, 'root');
  assert.equal(step(result, 1, 'workdir').path, '/srv/web');
  assert.equal(step(result, 1, 'workdir').user, '1000:1000');
  assert.equal(result.runtime.cwd, '/srv/web');
});

test('COPY after WORKDIR: a relative destination and an existing directory', () => {
  const result = plan('FROM cocoon/debian\nWORKDIR /app\nCOPY app.py .\nCOPY requirements.txt /app\nCOPY --chmod=755 app.py run\n' + CMD);
  assert.deepEqual(step(result, 1, 'copy').entries, [{ source: 'app.py', dest: '/app/app.py' }]);
  assert.deepEqual(step(result, 2, 'copy').entries, [{ source: 'requirements.txt', dest: '/app/requirements.txt' }]);
  assert.deepEqual(step(result, 3, 'copy').entries, [{ source: 'app.py', dest: '/app/run' }]);
  assert.equal(step(result, 3, 'copy').chmod, 0o755);
  assert.equal(step(result, 3, 'copy').chown, undefined);
});

test('COPY exec form allows spaces in paths; ADD of plain files behaves like COPY', () => {
  const files = filesOf({ 'my file.txt': 'x', 'app.py': 'a' });
  const result = plan('FROM cocoon/debian\nCOPY ["my file.txt", "/data/a b.txt"]\nADD --chown=app app.py /srv/\n' + CMD, { files });
  assert.deepEqual(step(result, 0, 'copy').entries, [{ source: 'my file.txt', dest: '/data/a b.txt' }]);
  assert.deepEqual(step(result, 1, 'copy').entries, [{ source: 'app.py', dest: '/srv/app.py' }]);
  assert.equal(step(result, 1, 'copy').chown, 'app');
});

test('EXPOSE: ranges, protocols, duplicates; UDP is ignored with a warning', () => {
  const result = plan('FROM cocoon/debian\nEXPOSE 8080/tcp 9000 9000 7000-7002\nEXPOSE 53/udp\n' + CMD);
  assert.deepEqual(result.runtime.exposedPorts, [7000, 7001, 7002, 8080, 9000]);
  assert.deepEqual(result.warnings, ['line 3: EXPOSE 53/udp is ignored: only TCP ports can be reached']);
});

test('LABEL in both forms; MAINTAINER becomes a label with a warning', () => {
  const result = plan('FROM cocoon/debian\nLABEL a=1 "b c"="d e"\nLABEL old style value\nMAINTAINER Jane <jane@example.com>\n' + CMD);
  assert.deepEqual(result.runtime.labels, { a: '1', 'b c': 'd e', old: 'style value', maintainer: 'Jane <jane@example.com>' });
  assert.match(result.warnings[0]!, /^line 4: MAINTAINER is deprecated/);
});

test('parser directives: escape=` changes the continuation character; syntax is accepted', () => {
  const result = plan([
    '# syntax=docker/dockerfile:1',
    '# escape=`',
    'FROM cocoon/debian',
    'ENV WINPATH=c:\\dir',
    'RUN echo a `',
    '    b',
    CMD,
  ].join('\n'));
  assert.equal(result.runtime.env.WINPATH, 'c:\\dir');
  assert.deepEqual(step(result, 0, 'run').argv, ['/bin/sh', '-c', 'echo a     b']);
  assert.equal(step(result, 0, 'run').line, 5);
});

test('comments, blank lines, lower-case keywords and CRLF line endings', () => {
  const result = plan('# leading comment\r\n\r\nfrom cocoon/debian\r\n  # indented comment\r\nrun echo hi\r\ncmd ["x"]\r\n');
  assert.deepEqual(step(result, 0, 'run').argv, ['/bin/sh', '-c', 'echo hi']);
  assert.equal(step(result, 0, 'run').line, 5);
});

test('base images and the Lambda alias', () => {
  for (const [from, name] of [['cocoon/debian', 'debian'], ['cocoon/debian:bookworm', 'debian'], ['cocoon/tiny', 'tiny']] as const) {
    const result = plan(`FROM ${from}\n${CMD}`);
    assert.deepEqual(result.stages[0]!.base, { kind: 'base-image', name });
    assert.equal(result.stages[0]!.parentKey, baseKeys[name]);
    assert.deepEqual(result.warnings, []);
  }
  const alias = plan(`FROM public.ecr.aws/lambda/microvms:al2023-minimal\n${CMD}`);
  assert.deepEqual(alias.stages[0]!.base, { kind: 'base-image', name: 'debian' });
  assert.deepEqual(alias.warnings, ['line 1: public.ecr.aws/lambda/microvms:al2023-minimal is an alias of cocoon/debian:bookworm; Amazon Linux is not available here']);
  const platform = plan(`FROM --platform=linux/amd64 cocoon/tiny\n${CMD}`);
  assert.match(platform.warnings[0]!, /^line 1: FROM --platform is ignored/);
});

test('multi-stage: FROM <stage> inherits the config; COPY --from by name and by index', () => {
  const result = plan([
    'FROM cocoon/debian AS Build',
    'ENV BUILT=yes',
    'WORKDIR /src',
    'RUN make',
    'FROM cocoon/tiny AS unused',
    'RUN echo never built',
    'FROM build AS test',
    'RUN make test',
    'FROM cocoon/tiny',
    'COPY --from=BUILD /src/out /usr/local/bin/',
    'COPY --from=2 /src/report.txt report.txt',
    CMD,
  ].join('\n'));
  assert.equal(result.finalStage, 3);
  assert.deepEqual(result.stages.map((s) => [s.name, s.used]), [['build', true], ['unused', false], ['test', true], [undefined, true]]);
  const test2 = result.stages[2]!;
  assert.deepEqual(test2.base, { kind: 'stage', index: 0 });
  assert.equal(test2.parentKey, result.stages[0]!.resultKey);
  assert.equal(step(result, 0, 'run', 2).cwd, '/src');
  assert.equal(step(result, 0, 'run', 2).env.BUILT, 'yes');
  assert.deepEqual(step(result, 0, 'copy').sources, [{ from: 'stage', stage: 0, path: '/src/out' }]);
  assert.deepEqual(step(result, 1, 'copy').sources, [{ from: 'stage', stage: 2, path: '/src/report.txt' }]);
  assert.deepEqual(step(result, 1, 'copy').entries, [{ source: '/src/report.txt', dest: '/report.txt' }]);
  assert.equal(result.runtime.env.BUILT, undefined);
  assert.deepEqual(result.stages.map((s) => s.steps.map(describeStep)), [
    ['[build 1/2] WORKDIR /src', '[build 2/2] RUN make'],
    ['[unused 1/1] RUN echo never built'],
    ['[test 1/1] RUN make test'],
    ['[stage-3 1/2] COPY --from=BUILD /src/out /usr/local/bin/', '[stage-3 2/2] COPY --from=2 /src/report.txt report.txt'],
  ]);
});

test('--target picks the final stage; later stages are not used', () => {
  const text = 'FROM cocoon/debian AS base\nCMD ["a"]\nFROM base AS dev\nCMD ["dev"]\nFROM base\nCMD ["prod"]';
  const result = plan(text, { target: 'Dev' });
  assert.equal(result.finalStage, 1);
  assert.deepEqual(result.runtime.argv, ['dev']);
  assert.deepEqual(result.stages.map((s) => s.used), [true, true, false]);
  assert.deepEqual(plan(text).runtime.argv, ['prod']);
});

test('describeStep: single stage shows [n/total]; long instructions are shortened', () => {
  const long = `RUN echo ${'x'.repeat(300)}`;
  const result = plan(`FROM cocoon/debian\nRUN apt-get install -y \\\n  python3-flask\n${long}\n${CMD}`);
  assert.equal(describeStep(finalSteps(result)[0]!), '[1/2] RUN apt-get install -y python3-flask');
  const text = describeStep(finalSteps(result)[1]!);
  assert.ok(text.startsWith('[2/2] RUN echo xxx') && text.endsWith('…') && text.length < 220);
});
