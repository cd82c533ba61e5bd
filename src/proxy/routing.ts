/**
 * Which MicroVM and guest port a request is for. Pure.
 * - `<microvmId>.<domain>[:port]` reaches the image's app port;
 * - `<port>-<microvmId>.<domain>` another guest port (it wins: it is part of the origin);
 * - else the `X-Cocoon-Port` header (or, on WebSockets, the subprotocol `cocoon.port.<n>`).
 */
import { AppError } from '../errors/errors.ts';

export interface Destination {
  microvmId: string;
  /** From the host name; undefined: the header, the subprotocol or the app port decide. */
  guestPort?: number;
}

const LABEL = /^(?:(\d{1,5})-)?(mvm-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

/** Undefined when the host is not a MicroVM endpoint of `domain`. */
export function destinationOf(host: string | undefined, domain: string): Destination | undefined {
  if (!host) return undefined;
  let name = host.toLowerCase();
  const colon = name.lastIndexOf(':');
  if (colon !== -1 && /^\d+$/.test(name.slice(colon + 1))) name = name.slice(0, colon);
  if (name.endsWith('.')) name = name.slice(0, -1);
  const suffix = `.${domain}`;
  if (!name.endsWith(suffix)) return undefined;
  const match = LABEL.exec(name.slice(0, -suffix.length));
  if (!match) return undefined;
  if (match[1] === undefined) return { microvmId: match[2]! };
  const guestPort = Number(match[1]);
  return isPort(guestPort) ? { microvmId: match[2]!, guestPort } : undefined;
}

/** The guest port named by a header or subprotocol value; `request.invalid` if it is not one. */
export function requestedPort(value: string | undefined, source: string): number | undefined {
  if (value === undefined) return undefined;
  const port = /^\d{1,5}$/.test(value.trim()) ? Number(value.trim()) : NaN;
  if (!isPort(port)) throw new AppError('request.invalid', `${source} must be a port from 1 to 65535`, { source });
  return port;
}

/** The public URL of a MicroVM's endpoint; the port is left out when it is HTTPS's own. */
export function endpointUrl(domain: string, proxyPort: number, microvmId: string): string {
  return `https://${microvmId}.${domain}${proxyPort === 443 ? '' : `:${proxyPort}`}`;
}

function isPort(port: number): boolean {
  return Number.isInteger(port) && port >= 1 && port <= 65535;
}
