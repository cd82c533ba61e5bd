import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BASE_DIRECTORIES } from './bases.ts';
import { globToRegExp, indexContext, planContextCopy, planStageCopy, type CopyRequest } from './copy.ts';
import { assertFails, filesOf } from './testing.ts';

const context = indexContext(filesOf({
  'app.py': 'app', 'util.py': 'util', 'README.md': 'readme', 'data.tar.gz': 'tgz',
  'src/main.py': 'main', 'src/lib/a.py': 'a', 'src/lib/b.txt': 'b', 'static/x.css': 'css',
}));

function copy(sources: string[], dest: string, extra: Partial<CopyRequest> = {}) {
  const request: CopyRequest = { line: 3, keyword: 'COPY', sources, dest, cwd: '/app', knownDirs: new Set(BASE_DIRECTORIES), ...extra };
  return planContextCopy(request, context);
}
const map = (result: ReturnType<typeof copy>): Record<string, string> =>
  Object.fromEntries(result.entries.map((e) => [e.dest, e.source]));

test('a file to a file path, to a path ending in /, and to . (relative to WORKDIR)', () => {
  assert.deepEqual(map(copy(['app.py'], '/srv/main.py')), { '/srv/main.py': 'app.py' });
  assert.deepEqual(map(copy(['app.py'], '/srv/')), { '/srv/app.py': 'app.py' });
  assert.deepEqual(map(copy(['app.py'], '.')), { '/app/app.py': 'app.py' });
  assert.deepEqual(map(copy(['./app.py'], 'sub/')), { '/app/sub/app.py': 'app.py' });
  assert.deepEqual(map(copy(['/app.py'], 'renamed.py')), { '/app/renamed.py': 'app.py' });
  assert.equal(copy(['app.py'], '/srv/main.py').destIsDirectory, false);
});

test('a file to a directory known to exist goes inside it', () => {
  assert.deepEqual(map(copy(['app.py'], '/tmp')), { '/tmp/app.py': 'app.py' });
  assert.deepEqual(map(copy(['app.py'], '/work', { knownDirs: new Set(['/work']) })), { '/work/app.py': 'app.py' });
});

test('a directory source copies its contents, not the directory itself', () => {
  assert.deepEqual(map(copy(['src'], '/code')), { '/code/main.py': 'src/main.py', '/code/lib/a.py': 'src/lib/a.py', '/code/lib/b.txt': 'src/lib/b.txt' });
  assert.deepEqual(map(copy(['src/lib/'], '.')), { '/app/a.py': 'src/lib/a.py', '/app/b.txt': 'src/lib/b.txt' });
  const all = copy(['.'], '.');
  assert.equal(all.entries.length, 8);
  assert.equal(all.sources.length, 8);
  assert.ok(all.dirs.includes('/app/src/lib'));
});

test('several sources need a destination ending in /', () => {
  assert.deepEqual(map(copy(['app.py', 'util.py'], '/srv/')), { '/srv/app.py': 'app.py', '/srv/util.py': 'util.py' });
  assertFails(() => copy(['app.py', 'util.py'], '/srv'), 'dockerfile.invalid', 3, /ending in \//);
});

test('wildcards match one path component; matched directories copy their contents', () => {
  assert.deepEqual(map(copy(['*.py'], '/srv/')), { '/srv/app.py': 'app.py', '/srv/util.py': 'util.py' });
  assert.deepEqual(map(copy(['src/*'], '/srv/')), { '/srv/main.py': 'src/main.py', '/srv/a.py': 'src/lib/a.py', '/srv/b.txt': 'src/lib/b.txt' });
  assert.deepEqual(map(copy(['src/lib/?.py'], '/srv/')), { '/srv/a.py': 'src/lib/a.py' });
  assert.deepEqual(map(copy(['[a-r]*.py'], '/srv/')), { '/srv/app.py': 'app.py' });
  assert.deepEqual(map(copy(['[!a]*.py'], '/srv/')), { '/srv/util.py': 'util.py' });
  // One match and no trailing slash: the destination is the file.
  assert.deepEqual(map(copy(['app.*'], '/srv/main.py')), { '/srv/main.py': 'app.py' });
  // Several matches make the destination a directory.
  assert.equal(copy(['*.py'], '/srv').destIsDirectory, true);
});

test('globToRegExp follows filepath.Match', () => {
  assert.ok(globToRegExp('*.py').test('a.py'));
  assert.ok(!globToRegExp('*.py').test('src/a.py'));
  assert.ok(globToRegExp('a\\*b').test('a*b'));
  assert.ok(!globToRegExp('a\\*b').test('axb'));
  assert.ok(globToRegExp('file[0-9].txt').test('file3.txt'));
  assert.ok(globToRegExp('a.b').test('a.b') && !globToRegExp('a.b').test('axb'));
});

test('missing sources: a plain path must exist; a wildcard may match nothing if something else is copied', () => {
  assertFails(() => copy(['nope.py'], '/srv/'), 'dockerfile.copy_source_missing', 3, /nope\.py/);
  assertFails(() => copy(['*.rb'], '/srv/'), 'dockerfile.copy_source_missing', 3);
  assert.deepEqual(map(copy(['app.py', 'yarn.lock*'], '/srv/')), { '/srv/app.py': 'app.py' });
});

test('sources may not leave the context', () => {
  assertFails(() => copy(['../etc/passwd'], '/srv/'), 'dockerfile.invalid', 3, /outside the build context/);
  assertFails(() => copy(['src/../../x'], '/srv/'), 'dockerfile.invalid', 3);
  assert.deepEqual(map(copy(['src/../app.py'], '/srv/')), { '/srv/app.py': 'app.py' });
});

test('ADD of plain files is COPY; archives and URLs are refused', () => {
  assert.deepEqual(map(copy(['app.py'], '/srv/', { keyword: 'ADD' })), { '/srv/app.py': 'app.py' });
  assertFails(() => copy(['data.tar.gz'], '/srv/', { keyword: 'ADD' }), 'dockerfile.unsupported_instruction', 3, /archive/);
  assertFails(() => copy(['*.gz'], '/srv/', { keyword: 'ADD' }), 'dockerfile.unsupported_instruction', 3);
  assertFails(() => copy(['https://example.com/x.py'], '/srv/', { keyword: 'ADD' }), 'dockerfile.unsupported_instruction', 3, /URL/);
  // COPY never extracts, so an archive is just a file.
  assert.deepEqual(map(copy(['data.tar.gz'], '/srv/')), { '/srv/data.tar.gz': 'data.tar.gz' });
});

test('the same destination twice: the later source wins', () => {
  const result = copy(['app.py', 'src/main.py', 'app.py'], '/srv/');
  assert.deepEqual(result.entries, [{ source: 'src/main.py', dest: '/srv/main.py' }, { source: 'app.py', dest: '/srv/app.py' }]);
  assert.deepEqual(result.sources.map((s) => s.path), ['src/main.py', 'app.py']);
});

test('context sources carry the sha256 and mode of each file', () => {
  assert.deepEqual(copy(['app.py'], '/srv/').sources, [{ from: 'context', path: 'app.py', sha256: 'app'.padEnd(64, '0'), mode: 0o644 }]);
});

test('stage copies keep absolute source paths and leave directory handling to the executor', () => {
  const request: CopyRequest = { line: 9, keyword: 'COPY', sources: ['/out/bin', 'lib/'], dest: 'dist/', cwd: '/app', knownDirs: new Set() };
  const result = planStageCopy(request, 1);
  assert.deepEqual(result.sources, [{ from: 'stage', stage: 1, path: '/out/bin' }, { from: 'stage', stage: 1, path: '/lib' }]);
  assert.deepEqual(result.entries, [{ source: '/out/bin', dest: '/app/dist' }, { source: '/lib', dest: '/app/dist' }]);
  assert.equal(result.destIsDirectory, true);
  const single = planStageCopy({ ...request, sources: ['/out/bin'], dest: '/usr/local/bin/tool' }, 1);
  assert.equal(single.destIsDirectory, false);
});
