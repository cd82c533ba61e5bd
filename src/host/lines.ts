/**
 * Output of guest programs cut into lines. Guest output is hostile: a line never grows past
 * MAX_LINE_CHARS (the rest becomes the next line), so no memory is held for a newline that never
 * comes; UTF-8 characters split between chunks stay whole; `\r\n` ends a line like `\n`.
 */
import { StringDecoder } from 'node:string_decoder';

const MAX_LINE_CHARS = 16 * 1024;

/** One output stream's chunks → whole lines; `end` gives the last, unterminated one. */
export class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';

  push(chunk: Buffer): string[] {
    const pieces = (this.partial + this.decoder.write(chunk)).split('\n');
    this.partial = pieces.pop() ?? '';
    const lines = pieces.flatMap(cut);
    while (this.partial.length > MAX_LINE_CHARS) {
      lines.push(this.partial.slice(0, MAX_LINE_CHARS));
      this.partial = this.partial.slice(MAX_LINE_CHARS);
    }
    return lines;
  }

  end(): string[] {
    const rest = this.partial + this.decoder.end();
    this.partial = '';
    return rest === '' ? [] : cut(rest);
  }
}

function cut(line: string): string[] {
  const text = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (text.length <= MAX_LINE_CHARS) return [text];
  const pieces: string[] = [];
  for (let i = 0; i < text.length; i += MAX_LINE_CHARS) pieces.push(text.slice(i, i + MAX_LINE_CHARS));
  return pieces;
}
