import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { inputHash, staleReason, type ArtifactRecord } from './cache.ts';

describe('build cache', () => {
  const record: ArtifactRecord = {
    file: 'vmlinux', sha256: 'x', sizeBytes: 10, mtimeMs: 5, inputHash: inputHash({ a: 1 }), builtAt: '', buildSeconds: 1,
  };

  it('hashes inputs independently of key order', () => {
    assert.equal(inputHash({ a: 1, b: [{ c: 2, d: 3 }] }), inputHash({ b: [{ d: 3, c: 2 }], a: 1 }));
    assert.notEqual(inputHash({ a: 1 }), inputHash({ a: 2 }));
  });

  it('rebuilds only when forced, missing, changed inputs or a changed file', () => {
    const stamp = { sizeBytes: 10, mtimeMs: 5 };
    assert.equal(staleReason(record, inputHash({ a: 1 }), stamp, false), undefined);
    assert.equal(staleReason(record, inputHash({ a: 1 }), stamp, true), 'forced');
    assert.equal(staleReason(record, inputHash({ a: 1 }), undefined, false), 'missing');
    assert.equal(staleReason(undefined, inputHash({ a: 1 }), stamp, false), 'not in the manifest');
    assert.equal(staleReason(record, inputHash({ a: 2 }), stamp, false), 'inputs changed');
    assert.equal(staleReason(record, inputHash({ a: 1 }), { sizeBytes: 10, mtimeMs: 6 }, false), 'file changed since it was built');
  });
});
