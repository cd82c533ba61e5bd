import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expandWord, splitWords, SubstitutionError } from './lexer.ts';

const vars = new Map([['NAME', 'world'], ['EMPTY', ''], ['SPACED', 'a b']]);
const x = (word: string, escape = '\\'): string => expandWord(word, vars, escape);

test('splitWords keeps quotes and escapes and splits on unquoted whitespace', () => {
  assert.deepEqual(splitWords('a=b c="d e"   f=g', '\\'), ['a=b', 'c="d e"', 'f=g']);
  assert.deepEqual(splitWords("a=b\\ c d='x y'", '\\'), ['a=b\\ c', "d='x y'"]);
  assert.deepEqual(splitWords('k=""', '\\'), ['k=""']);
  assert.deepEqual(splitWords('a=`  b', '`'), ['a=` ', 'b']);
  assert.deepEqual(splitWords('   ', '\\'), []);
});

test('$VAR and ${VAR} are substituted; unset variables are empty', () => {
  assert.equal(x('hello $NAME'), 'hello world');
  assert.equal(x('hello ${NAME}!'), 'hello world!');
  assert.equal(x('$NAME_x'), '');
  assert.equal(x('${NAME}_x'), 'world_x');
  assert.equal(x('$UNSET/x'), '/x');
  assert.equal(x('cost: $ 5 and $'), 'cost: $ 5 and $');
});

test('${VAR:-default} and ${VAR-default}', () => {
  assert.equal(x('${UNSET:-fallback}'), 'fallback');
  assert.equal(x('${EMPTY:-fallback}'), 'fallback');
  assert.equal(x('${NAME:-fallback}'), 'world');
  assert.equal(x('${EMPTY-fallback}'), '');
  assert.equal(x('${UNSET-fallback}'), 'fallback');
  assert.equal(x('${UNSET:-$NAME/x}'), 'world/x');
  assert.equal(x('${UNSET:-"a b"}'), 'a b');
});

test('${VAR:+alt} and ${VAR+alt}', () => {
  assert.equal(x('${NAME:+alt}'), 'alt');
  assert.equal(x('${EMPTY:+alt}'), '');
  assert.equal(x('${EMPTY+alt}'), 'alt');
  assert.equal(x('${UNSET:+alt}'), '');
});

test('${VAR:?message} fails when unset or empty', () => {
  assert.equal(x('${NAME:?needed}'), 'world');
  assert.throws(() => x('${UNSET:?set NAME}'), (e: unknown) => e instanceof SubstitutionError && e.kind === 'required' && /UNSET: set NAME/.test(e.message));
  assert.throws(() => x('${EMPTY:?}'), /EMPTY: is not allowed to be empty/);
  assert.equal(x('${EMPTY?}'), '');
});

test('quotes: single quotes are literal, double quotes expand, both are removed', () => {
  assert.equal(x("'$NAME'"), '$NAME');
  assert.equal(x('"$NAME"'), 'world');
  assert.equal(x('"a \\"b\\" \\$NAME \\n"'), 'a "b" $NAME \\n');
  assert.equal(x('"$SPACED"'), 'a b');
  assert.equal(x('pre"mid"post'), 'premidpost');
});

test('escapes outside quotes keep the next character literally', () => {
  assert.equal(x('\\$NAME'), '$NAME');
  assert.equal(x('a\\ b'), 'a b');
  assert.equal(x('c:\\\\dir'), 'c:\\dir');
  assert.equal(x('`$NAME c:\\dir', '`'), '$NAME c:\\dir');
});

test('malformed words are syntax errors', () => {
  for (const word of ['${NAME', '${}', '${:-x}', "'open", '"open', '${NAME:-x', '${NAME#x}', '${NAME/a/b}']) {
    assert.throws(() => x(word), (e: unknown) => e instanceof SubstitutionError && e.kind === 'syntax', word);
  }
});
