/**
 * A build's log: every line goes to the version's build.log (kept with the image) and to live
 * followers, so that a client can follow a build while it runs.
 */
import { EventEmitter } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';

export class BuildLog extends EventEmitter<{ line: [string]; end: [] }> {
  private readonly file: WriteStream;
  private partial = '';

  constructor(readonly path: string) {
    super();
    this.file = createWriteStream(path, { flags: 'a' });
  }

  line(text: string): void {
    const stamped = `${new Date().toISOString()} ${text}`;
    this.file.write(`${stamped}\n`);
    this.emit('line', stamped);
  }

  /** Output of a build step or the app: split into lines, a trailing partial line kept for later. */
  output(chunk: Buffer): void {
    const text = this.partial + chunk.toString('utf8');
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.line(`  | ${line}`);
  }

  async close(): Promise<void> {
    if (this.partial) this.line(`  | ${this.partial}`);
    this.partial = '';
    this.emit('end');
    await new Promise<void>((resolve) => this.file.end(resolve));
  }
}
