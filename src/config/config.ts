/**
 * Cocoon's configuration, read once into a frozen typed value: explicit values (flags) > COCOON_*
 * environment variables > defaults. Validated with zod: a bad value stops startup with
 * `config.invalid` naming the variable.
 */
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { AppError } from '../errors/errors.ts';

const schema = z.strictObject({
  /** Images, layers, VMs, keys: everything Cocoon keeps. */
  dataDir: z.string().min(1),
  /** Host-wide caches that survive a new data dir (the accelerator probe's answer). */
  cacheDir: z.string().min(1),
  accelerator: z.enum(['kvm', 'tcg']).optional(),
  /** MicroVM endpoints are https://<microvmId>.<domain>:<proxyPort>; names under .localhost resolve to loopback. */
  domain: z.string().regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$/, 'a lower-case DNS name such as cocoon.localhost'),
  /** The endpoint proxy's TLS port (HTTP/2 and HTTP/1.1 by ALPN); 0 picks a free one (tests). */
  proxyPort: z.number().int().min(0).max(65535),
  /** Plain-text HTTP/1.1 + h2c port of the proxy; off unless set. */
  proxyH2cPort: z.number().int().min(1).max(65535).optional(),
  /** A user-supplied certificate (PEM, wildcard for the domain) and key replace the local CA's. */
  tlsCertPath: z.string().min(1).optional(),
  tlsKeyPath: z.string().min(1).optional(),
  s3: z.strictObject({
    endpoint: z.string().url().optional(),
    region: z.string().optional(),
    accessKeyId: z.string().optional(),
    secretAccessKey: z.string().optional(),
    forcePathStyle: z.boolean().optional(),
  }),
});

export type Config = Readonly<z.infer<typeof schema>>;

const ENV: Record<string, string> = {
  dataDir: 'COCOON_DATA_DIR',
  cacheDir: 'COCOON_CACHE_DIR',
  accelerator: 'COCOON_ACCELERATOR',
  domain: 'COCOON_DOMAIN',
  proxyPort: 'COCOON_PROXY_PORT',
  proxyH2cPort: 'COCOON_PROXY_H2C_PORT',
  tlsCertPath: 'COCOON_TLS_CERT',
  tlsKeyPath: 'COCOON_TLS_KEY',
  's3.endpoint': 'COCOON_S3_ENDPOINT',
  's3.region': 'COCOON_S3_REGION',
  's3.accessKeyId': 'COCOON_S3_ACCESS_KEY_ID',
  's3.secretAccessKey': 'COCOON_S3_SECRET_ACCESS_KEY',
  's3.forcePathStyle': 'COCOON_S3_FORCE_PATH_STYLE',
};

export function loadConfig(explicit: Partial<{ dataDir: string; cacheDir: string; accelerator: string; domain: string; proxyPort: number; proxyH2cPort: number }> = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const defaultCache = path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'cocoon');
  const candidate = {
    dataDir: path.resolve(explicit.dataDir ?? env.COCOON_DATA_DIR ?? '.cocoon'),
    cacheDir: path.resolve(explicit.cacheDir ?? env.COCOON_CACHE_DIR ?? defaultCache),
    accelerator: explicit.accelerator ?? (env.COCOON_ACCELERATOR || undefined),
    domain: explicit.domain ?? env.COCOON_DOMAIN ?? 'cocoon.localhost',
    proxyPort: explicit.proxyPort ?? portFrom(env.COCOON_PROXY_PORT) ?? 8443,
    proxyH2cPort: explicit.proxyH2cPort ?? portFrom(env.COCOON_PROXY_H2C_PORT),
    tlsCertPath: env.COCOON_TLS_CERT || undefined,
    tlsKeyPath: env.COCOON_TLS_KEY || undefined,
    s3: dropUndefined({
      endpoint: env.COCOON_S3_ENDPOINT,
      region: env.COCOON_S3_REGION,
      accessKeyId: env.COCOON_S3_ACCESS_KEY_ID,
      secretAccessKey: env.COCOON_S3_SECRET_ACCESS_KEY,
      forcePathStyle: env.COCOON_S3_FORCE_PATH_STYLE === undefined ? undefined : env.COCOON_S3_FORCE_PATH_STYLE === 'true',
    }),
  };
  const parsed = schema.safeParse(dropUndefined(candidate));
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.path.join('.');
    throw new AppError('config.invalid', `${ENV[key] ?? key}: ${issue.message}`, { key });
  }
  return Object.freeze(parsed.data);
}

/** A non-numeric value stays a string so that the schema names the variable in its error. */
function portFrom(value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  return /^\d+$/.test(value) ? Number(value) : (value as unknown as number);
}

function dropUndefined<T extends Record<string, unknown>>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}
