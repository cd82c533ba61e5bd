import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_PATH } from './bases.ts';
import { assertFails, plan } from './testing.ts';

const argvOf = (...lines: string[]): string[] => plan(['FROM cocoon/debian', ...lines].join('\n')).runtime.argv;

// Docker's "How CMD and ENTRYPOINT interact" table, row by row.
test('no ENTRYPOINT: CMD alone, in exec and shell form', () => {
  assert.deepEqual(argvOf('CMD ["exec_cmd", "p1_cmd"]'), ['exec_cmd', 'p1_cmd']);
  assert.deepEqual(argvOf('CMD exec_cmd p1_cmd'), ['/bin/sh', '-c', 'exec_cmd p1_cmd']);
  assertFails(() => argvOf('RUN true'), 'dockerfile.invalid', 1, /no CMD or ENTRYPOINT/);
});

test('shell-form ENTRYPOINT ignores CMD, with a warning', () => {
  assert.deepEqual(argvOf('ENTRYPOINT exec_entry p1_entry'), ['/bin/sh', '-c', 'exec_entry p1_entry']);
  assert.deepEqual(argvOf('ENTRYPOINT exec_entry p1_entry', 'CMD ["exec_cmd", "p1_cmd"]'), ['/bin/sh', '-c', 'exec_entry p1_entry']);
  assert.deepEqual(argvOf('ENTRYPOINT exec_entry p1_entry', 'CMD exec_cmd p1_cmd'), ['/bin/sh', '-c', 'exec_entry p1_entry']);
  const result = plan('FROM cocoon/debian\nENTRYPOINT run.sh\nCMD ["x"]');
  assert.match(result.warnings[0]!, /ENTRYPOINT uses the shell form, so CMD \["x"\] is ignored/);
});

test('exec-form ENTRYPOINT gets CMD as arguments', () => {
  assert.deepEqual(argvOf('ENTRYPOINT ["exec_entry", "p1_entry"]'), ['exec_entry', 'p1_entry']);
  assert.deepEqual(argvOf('ENTRYPOINT ["exec_entry", "p1_entry"]', 'CMD ["exec_cmd", "p1_cmd"]'), ['exec_entry', 'p1_entry', 'exec_cmd', 'p1_cmd']);
  assert.deepEqual(argvOf('ENTRYPOINT ["exec_entry", "p1_entry"]', 'CMD exec_cmd p1_cmd'), ['exec_entry', 'p1_entry', '/bin/sh', '-c', 'exec_cmd p1_cmd']);
  assert.deepEqual(argvOf('CMD ["before"]', 'ENTRYPOINT ["e"]'), ['e', 'before'], 'a CMD of the same stage survives ENTRYPOINT');
});

test('the last CMD and ENTRYPOINT win; shell form uses the SHELL in effect when written', () => {
  assert.deepEqual(argvOf('CMD ["first"]', 'CMD ["second"]'), ['second']);
  assert.deepEqual(argvOf('SHELL ["/bin/bash", "-c"]', 'CMD echo $0', 'SHELL ["/bin/sh", "-c"]'), ['/bin/bash', '-c', 'echo $0']);
  assert.deepEqual(argvOf('CMD ["a b", "c"]'), ['a b', 'c']);
});

test('CMD that looks like JSON but is not runs as a shell command, with a warning', () => {
  const result = plan("FROM cocoon/debian\nCMD ['python3', 'app.py']");
  assert.deepEqual(result.runtime.argv, ['/bin/sh', '-c', "['python3', 'app.py']"]);
  assert.match(result.warnings[0]!, /^line 2: CMD starts with \[ but is not a JSON array/);
});

test('a stage built FROM another inherits CMD, unless it sets ENTRYPOINT (Docker resets CMD then)', () => {
  const inherit = plan('FROM cocoon/debian AS base\nCMD ["serve"]\nFROM base\nRUN true');
  assert.deepEqual(inherit.runtime.argv, ['serve']);
  const reset = plan('FROM cocoon/debian AS base\nCMD ["serve"]\nFROM base\nENTRYPOINT ["tini", "--"]');
  assert.deepEqual(reset.runtime.argv, ['tini', '--']);
  const inheritedEntrypoint = plan('FROM cocoon/debian AS base\nENTRYPOINT ["tini", "--"]\nFROM base\nCMD ["serve"]');
  assert.deepEqual(inheritedEntrypoint.runtime.argv, ['tini', '--', 'serve']);
});

test('the runtime config comes from the final stage', () => {
  const result = plan([
    'FROM cocoon/debian',
    'ENV A=1',
    'WORKDIR /app',
    'USER nobody',
    'EXPOSE 8080',
    'LABEL team=web',
    'CMD ["./serve"]',
  ].join('\n'));
  assert.deepEqual(result.runtime, {
    argv: ['./serve'], env: { PATH: DEFAULT_PATH, A: '1' }, cwd: '/app', user: 'nobody', exposedPorts: [8080], labels: { team: 'web' },
  });
});
