/**
 * The part of Docker's shell lexer that Dockerfile instructions use: splitting arguments into
 * words the way Docker's parser does, and expanding one word (quote removal, escapes and
 * `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`, `${VAR:?msg}`,
 * `${VAR?msg}`). RUN, CMD and ENTRYPOINT never come here: their text goes to the shell as-is.
 */

/** A malformed word; `required` is a `${VAR?msg}` whose variable is unset or empty. */
export class SubstitutionError extends Error {
  constructor(message: string, readonly kind: 'syntax' | 'required' = 'syntax') {
    super(message);
  }
}

export type Vars = ReadonlyMap<string, string>;

const isSpace = (ch: string): boolean => /\s/.test(ch);

/**
 * Splits on unquoted whitespace and keeps quotes and escapes in the words (Docker's `parseWords`,
 * used for ENV, ARG and LABEL); each word is expanded later.
 */
export function splitWords(text: string, escape: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote = '';
  let blankOk = false;
  for (let i = 0; i < text.length; i++) {
    let ch = text[i]!;
    if (quote) {
      if (ch === quote) quote = '';
      else if (ch === escape && quote !== "'" && i + 1 < text.length) {
        word += ch;
        ch = text[++i]!;
      }
      word += ch;
      continue;
    }
    if (isSpace(ch)) {
      if (inWord && (blankOk || word)) words.push(word);
      inWord = false;
      word = '';
      blankOk = false;
      continue;
    }
    inWord = true;
    if (ch === "'" || ch === '"') {
      quote = ch;
      blankOk = true;
    } else if (ch === escape) {
      if (i + 1 === text.length) continue;
      word += ch;
      ch = text[++i]!;
    }
    word += ch;
  }
  if (inWord && (blankOk || word)) words.push(word);
  return words;
}

/** Expands one word: removes quotes and escapes, substitutes variables, never splits. */
export function expandWord(word: string, vars: Vars, escape: string): string {
  return new WordLexer(word, vars, escape).until(null);
}

class WordLexer {
  private pos = 0;

  constructor(
    private readonly text: string,
    private readonly vars: Vars,
    private readonly escape: string,
  ) {}

  /** Reads up to `stop` (consumed) or the end of the text when `stop` is null. */
  until(stop: string | null): string {
    let out = '';
    while (this.pos < this.text.length) {
      const ch = this.text[this.pos]!;
      if (stop !== null && ch === stop) {
        this.pos++;
        return out;
      }
      if (ch === "'") out += this.singleQuoted();
      else if (ch === '"') out += this.doubleQuoted();
      else if (ch === '$') out += this.dollar();
      else if (ch === this.escape) {
        this.pos++;
        if (this.pos < this.text.length) out += this.text[this.pos++];
      } else {
        out += ch;
        this.pos++;
      }
    }
    if (stop !== null) throw new SubstitutionError("missing '}' in variable substitution");
    return out;
  }

  private singleQuoted(): string {
    const end = this.text.indexOf("'", this.pos + 1);
    if (end < 0) throw new SubstitutionError('unterminated single quote');
    const out = this.text.slice(this.pos + 1, end);
    this.pos = end + 1;
    return out;
  }

  private doubleQuoted(): string {
    this.pos++;
    let out = '';
    for (;;) {
      if (this.pos >= this.text.length) throw new SubstitutionError('unterminated double quote');
      const ch = this.text[this.pos]!;
      if (ch === '"') {
        this.pos++;
        return out;
      }
      if (ch === '$') {
        out += this.dollar();
        continue;
      }
      this.pos++;
      if (ch === this.escape) {
        const next = this.text[this.pos];
        if (next === undefined) continue;
        // Only these can be escaped inside double quotes; any other escape stays as written.
        if (next === '"' || next === '$' || next === this.escape) {
          out += next;
          this.pos++;
          continue;
        }
      }
      out += ch;
    }
  }

  private name(): string {
    const rest = this.text.slice(this.pos);
    const match = /^[0-9]+/.exec(rest) ?? /^[A-Za-z0-9_]*/.exec(rest);
    const name = match?.[0] ?? '';
    this.pos += name.length;
    return name;
  }

  private dollar(): string {
    this.pos++;
    if (this.text[this.pos] !== '{') {
      const name = this.name();
      return name ? (this.vars.get(name) ?? '') : '$';
    }
    this.pos++;
    const first = this.text[this.pos];
    if (first === undefined) throw new SubstitutionError("missing '}' in variable substitution");
    if (first === '{' || first === '}' || first === ':') throw new SubstitutionError('bad substitution');
    const name = this.name();
    if (!name) throw new SubstitutionError('bad substitution');
    let op = this.text[this.pos++];
    if (op === undefined) throw new SubstitutionError("missing '}' in variable substitution");
    const value = this.vars.get(name);
    if (op === '}') return value ?? '';
    const colon = op === ':';
    if (colon) op = this.text[this.pos++];
    if (op !== '-' && op !== '+' && op !== '?') {
      throw new SubstitutionError(`unsupported modifier (${colon ? ':' : ''}${op ?? ''}) in \${${name}...}`);
    }
    const word = this.until('}');
    const missing = value === undefined || (colon && value === '');
    if (op === '-') return missing ? word : value!;
    if (op === '+') return missing ? '' : word;
    if (missing) {
      const why = value === undefined ? 'is not allowed to be unset' : 'is not allowed to be empty';
      throw new SubstitutionError(`${name}: ${word || why}`, 'required');
    }
    return value!;
  }
}
