import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatOutput } from './format.ts';

const images = {
  images: [
    { name: 'web', version: '2.0', state: 'ACTIVE', appPort: 8080, codeArtifact: { uri: 'upload:a.zip' } },
    { name: 'flask', version: '1.0', state: 'FAILED', stateReason: 'bad\nstep', appPort: 8000 },
  ],
};

test('json is indented, null for nothing, one trailing newline', () => {
  assert.equal(formatOutput({ a: [1] }, 'json'), '{\n    "a": [\n        1\n    ]\n}\n');
  assert.equal(formatOutput(undefined, 'json'), 'null\n');
});

test('text: a scalar as is; scalar fields sorted and tab-separated; nested values on prefixed lines', () => {
  assert.equal(formatOutput('ACTIVE', 'text'), 'ACTIVE\n');
  assert.equal(formatOutput(null, 'text'), 'None\n');
  assert.equal(formatOutput(['a', 'b', 3], 'text'), 'a\tb\t3\n');
  assert.equal(formatOutput([], 'text'), '');
  assert.equal(formatOutput({ state: 'ACTIVE', name: 'web', runtime: { argv: ['httpd', '-f'] } }, 'text'), 'web\tACTIVE\nRUNTIME\tARGV\thttpd\t-f\n');
  assert.equal(
    formatOutput(images, 'text'),
    'IMAGES\t8080\tweb\tACTIVE\t2.0\nIMAGES\tCODEARTIFACT\tupload:a.zip\nIMAGES\t8000\tflask\tFAILED\tbad\nstep\t1.0\n',
  );
});

test('table: a titled list of rows with the union of scalar columns; missing cells blank; one line per row', () => {
  assert.equal(
    formatOutput(images, 'table'),
    [
      '+-------+---------+--------+---------+-------------+',
      '|                      images                      |',
      '+-------+---------+--------+---------+-------------+',
      '| name  | version | state  | appPort | stateReason |',
      '+-------+---------+--------+---------+-------------+',
      '| web   | 2.0     | ACTIVE | 8080    |             |',
      '| flask | 1.0     | FAILED | 8000    | bad step    |',
      '+-------+---------+--------+---------+-------------+',
      '',
    ].join('\n'),
  );
});

test('table: an object as key/value rows (nested as compact JSON), a scalar as one cell, a wide title widens the table', () => {
  assert.equal(formatOutput({ name: 'web', ports: [8080] }, 'table'), '+-------+--------+\n| name  | web    |\n| ports | [8080] |\n+-------+--------+\n');
  assert.equal(formatOutput('ACTIVE', 'table'), '+--------+\n| ACTIVE |\n+--------+\n');
  assert.equal(formatOutput({ microvms: [{ id: 'm' }] }, 'table'), '+----------+\n| microvms |\n+----------+\n| id       |\n+----------+\n| m        |\n+----------+\n');
  assert.equal(formatOutput({ microvms: [] }, 'table'), '+----------+\n| microvms |\n+----------+\n');
});
