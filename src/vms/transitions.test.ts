import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MICROVM_STATES, type MicroVmState } from '../store/index.ts';
import { canTransition, checkedSources, sourcesOf, TRANSITIONS } from './transitions.ts';

test('every state has an entry and every target is a known state', () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...MICROVM_STATES].sort());
  for (const targets of Object.values(TRANSITIONS)) for (const to of targets) assert.ok(MICROVM_STATES.includes(to));
});

test('the lifecycle edges, rollbacks included', () => {
  const allowed: Array<[MicroVmState, MicroVmState]> = [
    ['PENDING', 'RUNNING'], ['PENDING', 'FAILED'], ['PENDING', 'TERMINATING'],
    ['RUNNING', 'SUSPENDING'], ['RUNNING', 'TERMINATING'], ['RUNNING', 'FAILED'],
    ['SUSPENDING', 'SUSPENDED'], ['SUSPENDING', 'RUNNING'], ['SUSPENDING', 'FAILED'],
    ['SUSPENDED', 'RESUMING'], ['SUSPENDED', 'TERMINATING'],
    ['RESUMING', 'RUNNING'], ['RESUMING', 'SUSPENDED'], ['RESUMING', 'FAILED'],
    ['TERMINATING', 'TERMINATED'], ['FAILED', 'TERMINATING'],
  ];
  for (const from of MICROVM_STATES) {
    for (const to of MICROVM_STATES) {
      const expected = allowed.some(([a, b]) => a === from && b === to);
      assert.equal(canTransition(from, to), expected, `${from} → ${to}`);
    }
  }
});

test('TERMINATED is final; nothing skips TERMINATING; SUSPENDED is left only by resuming or terminating', () => {
  assert.deepEqual(TRANSITIONS.TERMINATED, []);
  assert.deepEqual(sourcesOf('TERMINATED'), ['TERMINATING']);
  assert.deepEqual(sourcesOf('SUSPENDED').sort(), ['RESUMING', 'SUSPENDING']);
  assert.ok(!canTransition('SUSPENDED', 'FAILED'), 'a suspended VM is never lost to FAILED');
});

test('checkedSources refuses an edge the table lacks', () => {
  assert.deepEqual(checkedSources(['RUNNING', 'SUSPENDED'], 'TERMINATING'), ['RUNNING', 'SUSPENDED']);
  assert.throws(() => checkedSources(['TERMINATED'], 'RUNNING'), /not in the table/);
  assert.throws(() => checkedSources(['SUSPENDED'], 'RUNNING'), /not in the table/);
});
