/**
 * The endpoint proxy's certificate. By default Cocoon is its own small CA: on first start it
 * creates a CA (ECDSA P-256, 10 years) and a wildcard leaf for `*.<domain>` and `<domain>` (825
 * days, the most browsers accept) in `<dataDir>/tls/` (directory 0700, keys 0600), and reuses them
 * afterwards; the leaf is re-issued when the domain changes, when it nears its end, or when the CA
 * was replaced. The user trusts `ca.pem` once. A user-supplied certificate and key (both, PEM)
 * replace all of it. Keys are generated in process; openssl (spawned without a shell) signs.
 */
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AppError } from '../errors/errors.ts';
import { run } from '../host/run.ts';

export interface ProxyTls {
  /** PEM: the leaf, then the CA when Cocoon issued it. */
  cert: string;
  key: string;
  certPath: string;
  /** The local CA clients must trust; undefined for a user-supplied certificate. */
  caPath?: string;
  /** Set when files were (re)generated on this start: say so to the user. */
  created?: 'ca' | 'leaf';
}

export interface TlsOptions {
  dataDir: string;
  domain: string;
  certPath?: string;
  keyPath?: string;
  now?: () => number;
}

const CA_DAYS = 3650;
const LEAF_DAYS = 825;
/** A leaf this close to its end is re-issued at start. */
const RENEW_BEFORE_MS = 30 * 86_400_000;

export function tlsPaths(dataDir: string): { dir: string; caKey: string; caCert: string; key: string; cert: string } {
  const dir = path.join(dataDir, 'tls');
  return { dir, caKey: path.join(dir, 'ca.key'), caCert: path.join(dir, 'ca.pem'), key: path.join(dir, 'server.key'), cert: path.join(dir, 'server.pem') };
}

export async function ensureProxyTls(options: TlsOptions): Promise<ProxyTls> {
  if (options.certPath !== undefined || options.keyPath !== undefined) return userSupplied(options);
  const now = options.now ?? Date.now;
  const paths = tlsPaths(options.dataDir);
  await mkdir(paths.dir, { recursive: true, mode: 0o700 });
  await chmod(paths.dir, 0o700);
  let created: ProxyTls['created'];
  let ca = await readCertificate(paths.caCert);
  if (!ca || !(await readOptional(paths.caKey)) || Date.parse(ca.validTo) - now() < RENEW_BEFORE_MS) {
    await writeKey(paths.caKey);
    await openssl(paths.dir, 'ca', ['-key', paths.caKey, '-days', String(CA_DAYS), '-subj', `/O=Cocoon/CN=Cocoon local CA (${os.hostname()})`], paths.caCert);
    ca = (await readCertificate(paths.caCert))!;
    created = 'ca';
  }
  const leaf = await readCertificate(paths.cert);
  const key = await readOptional(paths.key);
  if (!leaf || !key || !leafFits(leaf, key, ca, options.domain, now())) {
    await writeKey(paths.key);
    await openssl(paths.dir, 'leaf', [
      '-key', paths.key, '-CA', paths.caCert, '-CAkey', paths.caKey, '-days', String(LEAF_DAYS), '-subj', `/O=Cocoon/CN=*.${options.domain}`,
    ], paths.cert, options.domain);
    created ??= 'leaf';
  }
  const caPem = await readFile(paths.caCert, 'utf8');
  return {
    cert: `${(await readFile(paths.cert, 'utf8')).trimEnd()}\n${caPem}`,
    key: await readFile(paths.key, 'utf8'),
    certPath: paths.cert,
    caPath: paths.caCert,
    ...(created && { created }),
  };
}

/** Both files or neither; the key must be the certificate's. A certificate for another domain only warns the user (via the result), it may be deliberate. */
async function userSupplied(options: TlsOptions): Promise<ProxyTls> {
  const { certPath, keyPath } = options;
  if (certPath === undefined || keyPath === undefined) {
    throw new AppError('config.invalid', 'COCOON_TLS_CERT and COCOON_TLS_KEY go together: set both (a PEM certificate and its key) or neither');
  }
  const read = (file: string) => readFile(file, 'utf8').catch((error: unknown) => {
    throw new AppError('config.invalid', `cannot read ${file}: ${(error as Error).message}`, { file });
  });
  const [cert, key] = await Promise.all([read(certPath), read(keyPath)]);
  let matches: boolean;
  try {
    matches = new X509Certificate(cert).checkPrivateKey(createPrivateKey(key));
  } catch (error) {
    throw new AppError('config.invalid', `${certPath} / ${keyPath} are not a PEM certificate and key: ${(error as Error).message}`);
  }
  if (!matches) throw new AppError('config.invalid', `the key in ${keyPath} does not belong to the certificate in ${certPath}`);
  return { cert, key, certPath };
}

/** Whether the user-supplied (or any) certificate covers the MicroVM endpoints of `domain`. */
export function coversDomain(certPem: string, domain: string): boolean {
  const cert = new X509Certificate(certPem);
  return cert.checkHost(`mvm-0.${domain}`) !== undefined;
}

function leafFits(leaf: X509Certificate, key: string, ca: X509Certificate, domain: string, nowMs: number): boolean {
  try {
    return leaf.checkHost(`mvm-0.${domain}`) !== undefined && leaf.checkHost(domain) !== undefined
      && Date.parse(leaf.validTo) - nowMs > RENEW_BEFORE_MS
      && leaf.verify(ca.publicKey) && leaf.checkPrivateKey(createPrivateKey(key));
  } catch {
    return false;
  }
}

/** A fresh P-256 key, written 0600 from the start (temp name, then rename). */
async function writeKey(file: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const temp = `${file}.tmp-${process.pid}`;
  await writeFile(temp, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  await rename(temp, file);
}

/**
 * `openssl req -x509` with the extensions of a CA or of a server leaf from a config of our own
 * (the system's openssl.cnf would add its defaults).
 */
async function openssl(dir: string, kind: 'ca' | 'leaf', args: string[], out: string, domain?: string): Promise<void> {
  const config = path.join(dir, `openssl-${process.pid}.cnf`);
  const temp = `${out}.tmp-${process.pid}`;
  await writeFile(config, [
    '[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', 'CN = unused',
    '[ca]', 'basicConstraints = critical, CA:TRUE, pathlen:0', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash',
    '[leaf]', 'basicConstraints = critical, CA:FALSE', 'keyUsage = critical, digitalSignature', 'extendedKeyUsage = serverAuth',
    `subjectAltName = DNS:*.${domain ?? 'invalid'}, DNS:${domain ?? 'invalid'}`, 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid',
    '',
  ].join('\n'));
  try {
    await run('openssl', ['req', '-x509', '-new', '-config', config, '-extensions', kind, '-sha256', ...args, '-out', temp]);
    await rename(temp, out);
  } finally {
    await rm(config, { force: true });
    await rm(temp, { force: true });
  }
}

async function readOptional(file: string): Promise<string | undefined> {
  return readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}

async function readCertificate(file: string): Promise<X509Certificate | undefined> {
  const pem = await readOptional(file);
  if (pem === undefined) return undefined;
  try {
    return new X509Certificate(pem);
  } catch {
    return undefined; // unreadable: issued anew
  }
}
