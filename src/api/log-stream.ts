/**
 * Build logs over HTTP: the whole text, or Server-Sent Events that replay the log so far, follow a
 * running build line by line and finish with `event: end`. Followers never block the event loop:
 * a finished log is streamed from its file with backpressure, a slow client that falls too far
 * behind is cut off, and every listener goes away when the client does.
 */
import { once } from 'node:events';
import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import type { FastifyReply } from 'fastify';
import type { LiveBuildLog } from '../images/builder.ts';

/** A follower whose unsent output exceeds this is too slow: its stream is closed. */
const MAX_BUFFERED_BYTES = 8 * 2 ** 20;
const KEEPALIVE_MS = 15_000;

export interface FollowSource {
  /** The running build's log, if the build is queued or running. */
  live: LiveBuildLog | undefined;
  /** build.log: complete when `live` is undefined. */
  file: string;
  /** The data of the final `end` event (the version's state once the build ended). */
  endData: () => Promise<Record<string, unknown>>;
}

function event(line: string): string {
  // A CR would end the SSE line early: drop it (progress bars redraw with it).
  return `data: ${line.replace(/\r/g, '')}\n\n`;
}

/** build.log as a stream, or undefined while the build has not created it yet. */
export async function openLogFile(file: string): Promise<Readable | undefined> {
  const handle = await open(file, 'r').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  return handle?.createReadStream({ encoding: 'utf8' });
}

export function followLog(reply: FastifyReply, source: FollowSource): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'x-accel-buffering': 'no',
  });
  const closed = new Promise<undefined>((resolve) => res.once('close', () => resolve(undefined)));
  const cleanups: Array<() => void> = [];
  let finished = false;
  const cleanup = (): void => {
    for (const fn of cleanups.splice(0)) fn();
  };
  res.once('close', cleanup);

  const send = (chunk: string): boolean => {
    if (finished || res.destroyed) return false;
    if (res.writableLength > MAX_BUFFERED_BYTES) {
      finished = true;
      cleanup();
      res.destroy();
      return false;
    }
    return res.write(chunk);
  };
  const finish = async (): Promise<void> => {
    if (finished) return;
    cleanup();
    const data = await source.endData().catch(() => ({}));
    if (finished || res.destroyed) return;
    finished = true;
    res.end(`event: end\ndata: ${JSON.stringify(data)}\n\n`);
  };

  const live = source.live;
  if (live) {
    // Copying the lines and subscribing happen in one tick: no line is missed or repeated.
    let text = live.lines.map(event).join('');
    if (live.omittedLines > 0) text += `: ${live.omittedLines} more lines are only in the full log (GET without follow)\n\n`;
    send(text);
    if (live.ended) {
      void finish();
      return;
    }
    const onLine = (line: string): void => { send(event(line)); };
    const onEnd = (): void => { void finish(); };
    live.log.on('line', onLine);
    live.log.once('end', onEnd);
    const keepalive = setInterval(() => send(': keepalive\n\n'), KEEPALIVE_MS);
    cleanups.push(() => {
      live.log.off('line', onLine);
      live.log.off('end', onEnd);
      clearInterval(keepalive);
    });
    return;
  }
  void replayFile(res, source.file, send, closed).then(finish, () => finish());
}

async function replayFile(res: ServerResponse, file: string, send: (chunk: string) => boolean, closed: Promise<undefined>): Promise<void> {
  const input = await openLogFile(file);
  if (!input) return;
  const lines = createInterface({ input, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (res.destroyed) return;
      if (!send(event(line))) await Promise.race([once(res, 'drain'), closed]);
    }
  } finally {
    lines.close();
    input.destroy();
  }
}
