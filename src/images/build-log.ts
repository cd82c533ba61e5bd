/**
 * A build's log: every line goes to the version's build.log (kept with the image) and to live
 * followers, so that a client can follow a build while it runs. Output of the guest is cut into
 * bounded lines like a MicroVM's runtime log (src/host/lines.ts).
 */
import { EventEmitter } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { LineSplitter } from '../host/lines.ts';

export class BuildLog extends EventEmitter<{ line: [string]; end: [] }> {
  private readonly file: WriteStream;
  private readonly outputLines = new LineSplitter();

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
    for (const line of this.outputLines.push(chunk)) this.line(`  | ${line}`);
  }

  async close(): Promise<void> {
    for (const line of this.outputLines.end()) this.line(`  | ${line}`);
    this.emit('end');
    await new Promise<void>((resolve) => this.file.end(resolve));
  }
}
