/**
 * The typed SDK: one method per REST route, global fetch, errors as CocoonApiError. The CLI and
 * the console use only this.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { CocoonApiError, errorFromResponse } from './errors.ts';
import { SseParser } from './sse.ts';
import type {
  AuthTokenKeyRotation,
  BuildEnd,
  CreateMicroVmAuthTokenRequest,
  CreateImageRequest,
  Image,
  ImageList,
  ImageVersionList,
  ListMicroVmsFilter,
  MicroVm,
  MicroVmAuthToken,
  MicroVmList,
  MicroVmLogEnd,
  MicroVmLogOptions,
  RunMicroVmRequest,
  UploadImageOptions,
} from './types.ts';

export interface CocoonClientOptions {
  /** Default http://127.0.0.1:8787. */
  endpoint?: string;
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Per request (not for followed log streams). Default 60 s. */
  timeoutMs?: number;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

type Query = Record<string, string | string[] | number | undefined>;

export const DEFAULT_ENDPOINT = 'http://127.0.0.1:8787';

export class CocoonClient {
  readonly endpoint: string;
  private readonly apiKey: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: CocoonClientOptions = {}) {
    this.endpoint = (options.endpoint ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
    this.apiKey = options.apiKey;
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  // ---- images

  /** Builds from a URI the server fetches (`s3://…`; local paths only if the server allows them). */
  createImage(request: CreateImageRequest, options?: RequestOptions): Promise<Image> {
    return this.json('POST', '/v1/images', { body: request, ...options });
  }

  /** Sends a zip (a path, its bytes, or a stream) as the body; the build runs in the background. */
  uploadImage(name: string, zip: string | Buffer | Readable, options: UploadImageOptions = {}, request?: RequestOptions): Promise<Image> {
    const { buildArgs, ...rest } = options;
    const query: Query = { ...rest, buildArg: buildArgs && Object.entries(buildArgs).map(([key, value]) => `${key}=${value}`) };
    const body = typeof zip === 'string' ? createReadStream(zip) : zip;
    return this.json('POST', `/v1/images/${segment(name)}/upload`, { query, raw: body, contentType: 'application/zip', ...request });
  }

  /** The latest ACTIVE version, or the given one. */
  getImage(name: string, version?: string, options?: RequestOptions): Promise<Image> {
    return this.json('GET', `/v1/images/${segment(name)}`, { query: { version }, ...options });
  }

  /** The latest version of each image, in any state. */
  listImages(options?: RequestOptions): Promise<ImageList> {
    return this.json('GET', '/v1/images', options);
  }

  /** Every version of an image, oldest first. */
  listImageVersions(name: string, options?: RequestOptions): Promise<ImageVersionList> {
    return this.json('GET', `/v1/images/${segment(name)}/versions`, options);
  }

  deleteImage(name: string, version: string, options?: RequestOptions): Promise<Image> {
    return this.json('DELETE', `/v1/images/${segment(name)}`, { query: { version }, ...options });
  }

  /** The build log so far, as text. */
  async buildLogs(name: string, version: string, options?: RequestOptions): Promise<string> {
    const response = await this.send('GET', logsPath(name, version), { accept: 'text/plain', ...options });
    return response.text();
  }

  /**
   * Follows a build's log (Server-Sent Events): every line so far, then each new one as the build
   * writes it, until the build ends. Resolves with the final state.
   */
  followBuildLogs(name: string, version: string, onLine: (line: string) => void, options?: RequestOptions): Promise<BuildEnd> {
    return this.followLog(logsPath(name, version), {}, onLine, { what: `${name}:${version}`, until: 'the build ended' }, options);
  }

  // ---- MicroVMs

  runMicroVm(request: RunMicroVmRequest, options?: RequestOptions): Promise<MicroVm> {
    return this.json('POST', '/v1/microvms', { body: request, ...options });
  }

  getMicroVm(microvmId: string, options?: RequestOptions): Promise<MicroVm> {
    return this.json('GET', `/v1/microvms/${segment(microvmId)}`, options);
  }

  listMicroVms(filter: ListMicroVmsFilter = {}, options?: RequestOptions): Promise<MicroVmList> {
    return this.json('GET', '/v1/microvms', { query: { ...filter }, ...options });
  }

  suspendMicroVm(microvmId: string, options?: RequestOptions): Promise<MicroVm> {
    return this.json('POST', `/v1/microvms/${segment(microvmId)}/suspend`, options);
  }

  resumeMicroVm(microvmId: string, options?: RequestOptions): Promise<MicroVm> {
    return this.json('POST', `/v1/microvms/${segment(microvmId)}/resume`, options);
  }

  terminateMicroVm(microvmId: string, options?: RequestOptions): Promise<MicroVm> {
    return this.json('POST', `/v1/microvms/${segment(microvmId)}/terminate`, options);
  }

  /** The app's runtime log so far, as text: lines of `<time> <stdout|stderr|cocoon> <text>`. */
  async microvmLogs(microvmId: string, logOptions: MicroVmLogOptions = {}, options?: RequestOptions): Promise<string> {
    const response = await this.send('GET', `/v1/microvms/${segment(microvmId)}/logs`, { query: { ...logOptions }, accept: 'text/plain', ...options });
    return response.text();
  }

  /**
   * Follows the app's runtime log (Server-Sent Events): the lines so far (the last `tail` of them,
   * if given), then each new one, across suspends and resumes, until the MicroVM is TERMINATED or
   * FAILED. Resolves with that final state; abort `options.signal` to stop earlier.
   */
  followMicroVmLogs(microvmId: string, onLine: (line: string) => void, logOptions: MicroVmLogOptions = {}, options?: RequestOptions): Promise<MicroVmLogEnd> {
    return this.followLog(`/v1/microvms/${segment(microvmId)}/logs`, { ...logOptions }, onLine, { what: microvmId, until: 'the MicroVM ended' }, options);
  }

  // ---- auth tokens

  /** A token for the MicroVM's endpoint: send `authToken` as headers. Never log it. */
  createMicroVmAuthToken(microvmId: string, request: CreateMicroVmAuthTokenRequest = {}, options?: RequestOptions): Promise<MicroVmAuthToken> {
    return this.json('POST', `/v1/microvms/${segment(microvmId)}/auth-token`, { body: request, ...options });
  }

  /** Admin only: a new minting key; tokens of the previous key stay valid until they expire. */
  rotateAuthTokenKeys(options?: RequestOptions): Promise<AuthTokenKeyRotation> {
    return this.json('POST', '/v1/admin/auth-token-keys/rotate', options);
  }

  // ---- transport

  /** A log followed as Server-Sent Events: `data` lines to `onLine`, then the data of `event: end`. */
  private async followLog<T>(path: string, query: Query, onLine: (line: string) => void, describe: { what: string; until: string }, options?: RequestOptions): Promise<T> {
    const response = await this.send('GET', path, { query: { ...query, follow: 'true' }, accept: 'text/event-stream', stream: true, ...options });
    let end: T | undefined;
    const parser = new SseParser((event) => {
      if (event.event === 'end') end = JSON.parse(event.data) as T;
      else if (event.event === 'message') onLine(event.data);
    });
    try {
      const decoder = new TextDecoder();
      for await (const chunk of response.body ?? []) {
        parser.push(decoder.decode(chunk as Uint8Array, { stream: true }));
        if (end) break;
      }
    } catch (error) {
      throw new CocoonApiError('client.stream_ended', `the log stream of ${describe.what} broke: ${(error as Error).message}`, response.status, {}, { cause: error });
    }
    if (!end) throw new CocoonApiError('client.stream_ended', `the log stream of ${describe.what} closed before ${describe.until}`, response.status);
    return end;
  }

  private async json<T>(method: string, path: string, options: SendOptions = {}): Promise<T> {
    const response = await this.send(method, path, { accept: 'application/json', ...options });
    const text = await response.text();
    try {
      return JSON.parse(text) as T;
    } catch (error) {
      throw new CocoonApiError('client.bad_response', `HTTP ${response.status} with a body that is not JSON: ${text.slice(0, 200)}`, response.status, {}, { cause: error });
    }
  }

  private async send(method: string, path: string, options: SendOptions): Promise<Response> {
    const url = new URL(this.endpoint + path);
    for (const [key, value] of Object.entries(options.query ?? {})) {
      if (value === undefined) continue;
      for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(key, String(item));
    }
    const headers: Record<string, string> = { accept: options.accept ?? 'application/json' };
    if (this.apiKey !== undefined) headers.authorization = `Bearer ${this.apiKey}`;
    let body: BodyInit | undefined;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    } else if (options.raw !== undefined) {
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
      body = Buffer.isBuffer(options.raw) ? new Uint8Array(options.raw) : (Readable.toWeb(options.raw) as unknown as ReadableStream<Uint8Array>);
    } else if (method === 'POST') {
      // fastify answers an empty POST declared as JSON with 400: action routes get an empty object.
      headers['content-type'] = 'application/json';
      body = '{}';
    }
    // Uploads and followed streams run as long as they take; everything else has a deadline.
    const deadline = options.stream || options.raw !== undefined ? undefined : AbortSignal.timeout(this.timeoutMs);
    const signals = [options.signal, deadline].filter((signal): signal is AbortSignal => signal !== undefined);
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers,
        ...(body !== undefined && { body }),
        ...(body instanceof ReadableStream && { duplex: 'half' }),
        ...(signals.length > 0 && { signal: AbortSignal.any(signals) }),
      } as RequestInit);
    } catch (error) {
      if (options.raw instanceof Readable) options.raw.destroy();
      const reason = (error as { cause?: { code?: string; message?: string } }).cause;
      const what = (error as Error).name === 'TimeoutError' ? `no answer within ${this.timeoutMs} ms` : (reason?.code ?? reason?.message ?? (error as Error).message);
      throw new CocoonApiError('client.unreachable', `${method} ${url.origin}${url.pathname} failed: ${what}`, 0, { endpoint: this.endpoint }, { cause: error });
    }
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }
}

interface SendOptions extends RequestOptions {
  query?: Query;
  body?: unknown;
  raw?: Buffer | Readable;
  contentType?: string;
  accept?: string;
  /** The response body is consumed as a stream: no deadline. */
  stream?: boolean;
}

function segment(value: string): string {
  return encodeURIComponent(value);
}

function logsPath(name: string, version: string): string {
  return `/v1/images/${segment(name)}/versions/${segment(version)}/logs`;
}
