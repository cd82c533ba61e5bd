import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../../errors/errors.ts';
import { assertFails, plan } from './testing.ts';

/** Puts `line` on line 3, after a valid start, and ends with a CMD. */
const at3 = (line: string): string => `FROM cocoon/debian\nWORKDIR /app\n${line}\nCMD ["x"]`;

test('unsupported instructions name the instruction and its line', () => {
  for (const instruction of ['HEALTHCHECK CMD curl -f http://localhost/', 'VOLUME /data', 'STOPSIGNAL SIGTERM', 'ONBUILD RUN make']) {
    const keyword = instruction.split(' ')[0]!;
    assertFails(() => plan(at3(instruction)), 'dockerfile.unsupported_instruction', 3, new RegExp(`${keyword} is not supported`));
  }
  assertFails(() => plan(at3('RUN --mount=type=cache,target=/root/.cache pip install x')), 'dockerfile.unsupported_instruction', 3, /RUN --mount/);
  assertFails(() => plan(at3('ADD https://example.com/app.tar.gz /srv/')), 'dockerfile.unsupported_instruction', 3, /URL/);
  assertFails(() => plan(at3('ADD vendor.tar.gz /srv/'), { files: new Map([['vendor.tar.gz', { sizeBytes: 1, mode: 0o644, sha256: 'v' }]]) }), 'dockerfile.unsupported_instruction', 3, /archive/);
  assertFails(() => plan(at3('COPY <<EOF /etc/app.conf\nkey=value\nEOF')), 'dockerfile.unsupported_instruction', 3, /here-document/);
  assertFails(() => plan(at3('COPY --parents app.py /srv/')), 'dockerfile.unsupported_instruction', 3, /--parents/);
  assertFails(() => plan(at3('RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF')), 'dockerfile.unsupported_instruction', 3, /#!/);
  try {
    plan(at3('VOLUME /data'));
  } catch (error) {
    assert.ok(isAppError(error));
    assert.deepEqual(error.details, { line: 3, instruction: 'VOLUME' });
  }
});

test('syntax errors carry the line of the instruction', () => {
  const cases: Array<[string, RegExp]> = [
    ['FROOM cocoon/debian', /unknown instruction FROOM/],
    ['RUN', /RUN requires a command/],
    ['RUN []', /RUN \[\] has no command/],
    ['ENV ONLY_A_NAME', /has no value/],
    ['ENV a=b c', /can't find =/],
    ['ENV X=${BROKEN', /missing '}'/],
    ['COPY "app.py /srv/', /unterminated double quote/],
    ['COPY app.py', /at least one source and a destination/],
    ['COPY --chown app.py /srv/', /--chown needs a value/],
    ['COPY --nope=1 app.py /srv/', /unknown flag --nope/],
    ['ADD --from=0 app.py /srv/', /unknown flag --from/],
    ['RUN --frobnicate echo', /unknown flag --frobnicate/],
    ['SHELL /bin/bash -c', /SHELL requires a non-empty JSON array/],
    ['SHELL []', /SHELL requires/],
    ['USER', /USER requires/],
    ['EXPOSE', /EXPOSE requires/],
    ['ARG 1BAD=x', /invalid ARG name/],
    ['WORKDIR', /WORKDIR requires a path/],
    ['CMD', /CMD requires a command/],
    ['LABEL', /LABEL requires/],
    ['ENV X=${Y/a/b}', /unsupported modifier/],
  ];
  for (const [line, pattern] of cases) assertFails(() => plan(at3(line)), 'dockerfile.syntax', 3, pattern);
});

test('syntax errors in FROM lines, stage names, directives and here-documents', () => {
  assertFails(() => plan('RUN echo hi\nFROM cocoon/debian'), 'dockerfile.syntax', 1, /before the first FROM/);
  assertFails(() => plan('FROM cocoon/debian AS\nCMD ["x"]'), 'dockerfile.syntax', 1, /AS <name>/);
  assertFails(() => plan('FROM cocoon/debian build\nCMD ["x"]'), 'dockerfile.syntax', 1);
  assertFails(() => plan('FROM cocoon/debian AS 1st\nCMD ["x"]'), 'dockerfile.syntax', 1, /invalid stage name/);
  assertFails(() => plan('FROM --foo=bar cocoon/debian\nCMD ["x"]'), 'dockerfile.syntax', 1, /unknown flag --foo/);
  assertFails(() => plan('# escape=x\nFROM cocoon/debian\nCMD ["x"]'), 'dockerfile.syntax', 1, /invalid escape character/);
  assertFails(() => plan('FROM cocoon/debian\nCMD ["x"]\nRUN <<EOF\necho never closed'), 'dockerfile.syntax', 3, /no closing EOF/);
});

test('unknown base images list the valid names', () => {
  for (const image of ['python:3.12', 'scratch', 'cocoon/debian@sha256:abc', 'cocoon/debian:trixie', 'later']) {
    assert.throws(() => plan(`FROM cocoon/debian\nRUN true\nFROM ${image}\nCMD ["x"]\nFROM cocoon/tiny AS later`), (error: unknown) => {
      assert.ok(isAppError(error, 'dockerfile.unknown_base'));
      assert.equal(error.details.line, 3);
      assert.equal(error.details.image, image);
      assert.deepEqual(error.details.validNames, ['cocoon/debian', 'cocoon/debian:bookworm', 'cocoon/tiny', 'public.ecr.aws/lambda/microvms:al2023-minimal']);
      assert.match(error.message, /cocoon\/debian:bookworm/);
      return true;
    });
  }
  assertFails(() => plan('ARG BASE=python\nFROM $BASE\nCMD ["x"]'), 'dockerfile.unknown_base', 2, /unknown base image python/);
});

test('unknown stages in COPY --from and --target', () => {
  const text = 'FROM cocoon/debian AS build\nRUN make\nFROM cocoon/tiny\nCOPY --from=%s /out /out\nCMD ["x"]';
  for (const ref of ['nope', '1', '2', 'nginx:latest']) {
    assertFails(() => plan(text.replace('%s', ref)), 'dockerfile.unknown_stage', 4, /names no earlier stage \(earlier stages: build\)/);
  }
  assertFails(() => plan('FROM cocoon/debian\nCOPY --from=later /x /x\nFROM cocoon/tiny AS later\nCMD ["x"]'), 'dockerfile.unknown_stage', 2);
  assert.throws(() => plan(text.replace('%s', 'build'), { target: 'prod' }), (error: unknown) => {
    assert.ok(isAppError(error, 'dockerfile.unknown_stage'));
    assert.match(error.message, /target stage prod is not defined \(stages: build\)/);
    return true;
  });
});

test('invalid Dockerfiles', () => {
  assertFails(() => plan('# only a comment\nARG X=1'), 'dockerfile.invalid', undefined, /no FROM/);
  assertFails(() => plan('FROM cocoon/debian AS a\nFROM cocoon/tiny AS A\nCMD ["x"]'), 'dockerfile.invalid', 2, /already used on line 1/);
  assertFails(() => plan(at3('COPY app.py requirements.txt /srv')), 'dockerfile.invalid', 3, /ending in \//);
  assertFails(() => plan(at3('COPY ../secrets /srv/')), 'dockerfile.invalid', 3, /outside the build context/);
  assertFails(() => plan(at3('COPY --chmod=u+x app.py /srv/')), 'dockerfile.invalid', 3, /octal/);
  assertFails(() => plan(at3('EXPOSE 70000')), 'dockerfile.invalid', 3, /invalid EXPOSE port/);
  assertFails(() => plan(at3('EXPOSE http')), 'dockerfile.invalid', 3);
  assertFails(() => plan(at3('ENV URL="${API_URL:?set API_URL with --build-arg}"')), 'dockerfile.invalid', 3, /API_URL: set API_URL/);
  assertFails(() => plan('ARG EMPTY\nFROM $EMPTY\nCMD ["x"]'), 'dockerfile.invalid', 2, /empty image/);
  assertFails(() => plan('FROM cocoon/debian\nRUN true'), 'dockerfile.invalid', 1, /no CMD or ENTRYPOINT/);
});

test('missing COPY sources', () => {
  assertFails(() => plan(at3('COPY main.py /srv/')), 'dockerfile.copy_source_missing', 3, /main\.py/);
  assertFails(() => plan(at3('COPY src/ /srv/')), 'dockerfile.copy_source_missing', 3);
  assertFails(() => plan(at3('ADD *.rb /srv/')), 'dockerfile.copy_source_missing', 3);
  assertFails(() => plan(at3('COPY ${DIR:-lib}/app.py /srv/')), 'dockerfile.copy_source_missing', 3, /source lib\/app\.py is not/);
});

test('errors inside stages that the target does not need still fail the plan', () => {
  assertFails(() => plan('FROM cocoon/debian AS dev\nVOLUME /x\nFROM cocoon/tiny\nCMD ["x"]'), 'dockerfile.unsupported_instruction', 2);
});
