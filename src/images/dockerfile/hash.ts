/** Canonical JSON and the chained sha256 keys of build steps. */
import { createHash } from 'node:crypto';

type Json = string | number | boolean | null | Json[] | { [key: string]: Json | undefined };

/** JSON with object keys sorted at every level and `undefined` members left out. */
export function canonicalJson(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const members = Object.keys(value)
      .sort()
      .filter((key) => value[key] !== undefined)
      .map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key]!)}`);
    return `{${members.join(',')}}`;
  }
  return JSON.stringify(value);
}

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The key of a layer: its parent's key and a canonical description of what the step does. */
export function chainKey(parentKey: string, content: Json): string {
  return sha256Hex(`${parentKey}\n${canonicalJson(content)}`);
}

export type { Json };
