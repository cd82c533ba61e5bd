import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { missingPackages, parseDpkgQuery } from './packages.ts';

describe('package check', () => {
  it('reads dpkg-query output and names what is missing', () => {
    const states = parseDpkgQuery('busybox-static\tii \t1:1.35.0-4\nmmdebstrap\trc \t1.3.5-7\nxz-utils:amd64\tii \t5.4.1-1\n');
    assert.deepEqual(states.get('busybox-static'), { installed: true, version: '1:1.35.0-4' });
    assert.equal(states.get('xz-utils')?.installed, true);
    assert.deepEqual(missingPackages(['busybox-static', 'mmdebstrap', 'e2fsprogs', 'xz-utils'], states), ['mmdebstrap', 'e2fsprogs']);
  });
});
