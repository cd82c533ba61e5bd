/**
 * Logs over HTTP as Server-Sent Events: the log so far, then its new lines live, then `event: end`
 * once nothing more will come. Used for build logs and MicroVM runtime logs. Followers never block
 * the event loop: the history is streamed with backpressure, a slow client that falls too far
 * behind is cut off, and every listener goes away when the client does.
 */
import { once } from 'node:events';
import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { LiveBuildLog } from '../images/builder.ts';

/** A follower whose unsent output exceeds this is too slow: its stream is closed. */
const MAX_BUFFERED_BYTES = 8 * 2 ** 20;
const KEEPALIVE_MS = 15_000;
const TEXT_CHUNK_CHARS = 64 * 1024;
/** Open follows per HTTP server, to end at its close (an open stream would hold the close until its client leaves). */
const openFollows = new WeakMap<object, Set<() => void>>();

export interface LogFollower {
  line(text: string): void;
  /** Nothing follows: may be called at once (a finished log), or any time later. */
  end(): void;
}

export interface LogSubscription {
  /** The lines logged before the subscription, oldest first; always iterated (it may hold files open). */
  history: AsyncIterable<string> | Iterable<string>;
  /** Sent as an SSE comment after the history. */
  note?: string;
  unsubscribe(): void;
}

export interface FollowSource {
  /** Returns the history and subscribes `follower` to what follows, in one step: no line is missed or repeated. */
  subscribe(follower: LogFollower): LogSubscription;
  /** The data of the final `end` event. */
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

/** `?follow=true`, or no `follow` at all and `Accept: text/event-stream`. */
export function wantsFollow(request: { query: { follow?: 'true' | 'false' | undefined }; headers: { accept?: string | undefined } }): boolean {
  return request.query.follow === 'true' || (request.query.follow === undefined && (request.headers.accept ?? '').includes('text/event-stream'));
}

/** Lines as a text/plain body, in chunks of about 64 KiB, read as the client takes them. */
export function linesAsText(lines: AsyncIterable<string>): Readable {
  return Readable.from((async function* () {
    let chunk = '';
    for await (const line of lines) {
      chunk += `${line}\n`;
      if (chunk.length >= TEXT_CHUNK_CHARS) {
        yield chunk;
        chunk = '';
      }
    }
    if (chunk !== '') yield chunk;
  })());
}

/** When `app` closes, its open follows end (without an `end` event: the log goes on). */
export function endFollowsOnClose(app: FastifyInstance): void {
  app.addHook('preClose', (done) => {
    for (const stop of openFollows.get(app.server) ?? []) stop();
    done();
  });
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

  const cutOff = (): void => {
    finished = true;
    cleanup();
    res.destroy();
  };
  const send = (chunk: string): boolean => {
    if (finished || res.destroyed) return false;
    if (res.writableLength > MAX_BUFFERED_BYTES) {
      cutOff();
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

  // Lines that arrive while the history is sent wait for it, within the same bound.
  let waiting: string[] | undefined = [];
  let waitingBytes = 0;
  let ended = false;
  const subscription = source.subscribe({
    line: (text) => {
      if (!waiting) return void send(event(text));
      waiting.push(text);
      waitingBytes += text.length;
      if (waitingBytes > MAX_BUFFERED_BYTES) cutOff();
    },
    end: () => {
      ended = true;
      if (!waiting) void finish();
    },
  });
  const keepalive = setInterval(() => send(': keepalive\n\n'), KEEPALIVE_MS);
  const follows = openFollows.get(reply.server.server) ?? new Set<() => void>();
  openFollows.set(reply.server.server, follows);
  const stop = (): void => {
    finished = true;
    cleanup();
    res.end();
  };
  follows.add(stop);
  cleanups.push(() => {
    subscription.unsubscribe();
    clearInterval(keepalive);
    follows.delete(stop);
  });
  void replay(res, subscription.history, send, closed).then(() => {
    if (subscription.note !== undefined) send(`: ${subscription.note}\n\n`);
    send((waiting ?? []).map(event).join(''));
    waiting = undefined;
    if (ended) void finish();
  }, cutOff);
}

async function replay(res: ServerResponse, history: AsyncIterable<string> | Iterable<string>, send: (chunk: string) => boolean, closed: Promise<undefined>): Promise<void> {
  for await (const line of history) {
    if (res.destroyed) return;
    if (!send(event(line))) await Promise.race([once(res, 'drain'), closed]);
  }
}

/**
 * A build's log: a running build's lines from memory and its new lines as they come; a finished
 * build's build.log.
 */
export function subscribeBuildLog(live: LiveBuildLog | undefined, file: string, follower: LogFollower): LogSubscription {
  if (!live) {
    follower.end();
    return { history: fileLines(file), unsubscribe: () => {} };
  }
  // Copying the lines and subscribing happen in one tick: no line is missed or repeated.
  const history = [...live.lines];
  const note = live.omittedLines > 0 ? `${live.omittedLines} more lines are only in the full log (GET without follow)` : undefined;
  if (live.ended) {
    follower.end();
    return { history, ...(note !== undefined && { note }), unsubscribe: () => {} };
  }
  const onLine = (line: string): void => follower.line(line);
  const onEnd = (): void => follower.end();
  live.log.on('line', onLine);
  live.log.once('end', onEnd);
  return {
    history,
    ...(note !== undefined && { note }),
    unsubscribe: () => {
      live.log.off('line', onLine);
      live.log.off('end', onEnd);
    },
  };
}

async function* fileLines(file: string): AsyncGenerator<string> {
  const input = await openLogFile(file);
  if (!input) return;
  const lines = createInterface({ input, crlfDelay: Infinity });
  try {
    yield* lines;
  } finally {
    lines.close();
    input.destroy();
  }
}
