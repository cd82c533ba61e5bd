/**
 * Reads a Dockerfile with dockerfile-ast (parser directives, continuations, comments, flags,
 * here-documents) into plain records, so that the planner depends on a small surface of it.
 */
import { Copy, DockerfileParser, ModifiableInstruction, Run } from 'dockerfile-ast';
import { fail } from './fail.ts';

export interface Flag {
  name: string;
  /** Null for a flag written without `=`, e.g. `--link`. */
  value: string | null;
}

export interface Heredoc {
  name: string;
  /** The lines between the opening and the delimiter, each ending in `\n`. */
  body: string;
  /** `<<-`: leading tabs are stripped from the body. */
  chomp: boolean;
}

export interface SourceInstruction {
  /** Upper-case keyword as written (not necessarily a known one). */
  keyword: string;
  /** 1-based line where the instruction starts. */
  line: number;
  flags: Flag[];
  /** The arguments after the flags, continuations joined and comment lines dropped; for an
   * instruction with here-documents, only its first line. Empty when there are none. */
  text: string;
  heredocs: Heredoc[];
  /** `KEYWORD --flag=value arguments`, whitespace collapsed, for logs. */
  display: string;
}

export interface SourceDockerfile {
  escape: string;
  instructions: SourceInstruction[];
}

export function readDockerfile(dockerfileText: string): SourceDockerfile {
  const text = dockerfileText.replace(/\r\n?/g, '\n');
  const lines = text.split('\n');
  const ast = DockerfileParser.parse(text);
  const escape = ast.getEscapeCharacter();
  for (const directive of ast.getDirectives()) {
    if (directive.getName().toLowerCase() === 'escape' && !['\\', '`'].includes(directive.getValue())) {
      const line = directive.getRange().start.line + 1;
      fail('dockerfile.syntax', line, `invalid escape character ${JSON.stringify(directive.getValue())}; use \\ or \``);
    }
  }
  const instructions = ast.getInstructions().map((instruction): SourceInstruction => {
    const line = instruction.getRange().start.line + 1;
    const keyword = instruction.getKeyword().toUpperCase();
    const flags =
      instruction instanceof ModifiableInstruction
        ? instruction.getFlags().map((flag) => ({ name: flag.getName(), value: flag.getValue() }))
        : [];
    const raw = instruction.getRawArgumentsContent() ?? '';
    const astHeredocs = instruction instanceof Run || instruction instanceof Copy ? instruction.getHeredocs() : [];
    const heredocs = astHeredocs.map((heredoc): Heredoc => {
      const delimiter = heredoc.getDelimiterRange();
      if (delimiter === null) {
        fail('dockerfile.syntax', line, `here-document <<${heredoc.getName()} has no closing ${heredoc.getName()} line`);
      }
      const start = heredoc.getStartRange();
      const opening = lines[start.start.line]!.slice(start.start.character, start.end.character);
      const chomp = opening.startsWith('<<-');
      const contentRange = heredoc.getContentRange();
      let body = '';
      if (contentRange !== null) {
        body = lines.slice(contentRange.start.line, contentRange.end.line + 1).map((l) => `${l}\n`).join('');
      }
      if (chomp) body = body.replace(/^\t+/gm, '');
      return { name: heredoc.getName(), body, chomp };
    });
    const argsText = heredocs.length > 0 ? (instruction.getArgumentsContent() ?? '').split('\n')[0]! : joinLines(raw, escape);
    const flagText = flags.map((f) => (f.value === null ? `--${f.name}` : `--${f.name}=${f.value}`));
    const display = [keyword, ...flagText, argsText].join(' ').replace(/\s+/g, ' ').trim();
    return { keyword, line, flags, text: argsText.trim(), heredocs, display };
  });
  return { escape, instructions };
}

/**
 * Docker's line continuations: an escape character at the end of a line (trailing blanks allowed)
 * joins the next line; comment lines and blank lines inside a continuation are dropped. (The
 * parser's own joined text keeps indented comment lines, which Docker drops.)
 */
export function joinLines(raw: string, escape: string): string {
  const continuation = new RegExp(`${escape === '`' ? '`' : '\\\\'}[ \\t]*$`);
  const lines = raw.split('\n');
  let joined = '';
  for (const [i, line] of lines.entries()) {
    if (i > 0 && /^\s*(#|$)/.test(line)) continue;
    const match = continuation.exec(line);
    if (match === null) return joined + line;
    joined += line.slice(0, match.index);
  }
  return joined;
}

/** Docker's exec form: a JSON array of strings. Null when the text is not one (then it is shell form). */
export function parseExecForm(text: string): string[] | null {
  if (!text.startsWith('[')) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!Array.isArray(value) || !value.every((item): item is string => typeof item === 'string')) return null;
  return value;
}
