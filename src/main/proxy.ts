/**
 * Wires the endpoint proxy: its certificate (the local CA's or the user's), the proxy on the
 * configured ports (loopback), and what the user needs to reach MicroVMs: the URL pattern and how
 * to trust the local CA.
 */
import type { Config } from '../config/config.ts';
import { coversDomain, endpointUrl, ensureProxyTls, EndpointProxy, type EndpointProxyOptions } from '../proxy/index.ts';

export interface StartedProxy {
  proxy: EndpointProxy;
  /** The TLS port in use (config.proxyPort, or the one picked for 0). */
  port: number;
  h2cPort?: number;
  /** The local CA clients must trust; undefined with a user-supplied certificate. */
  caPath?: string;
}

export interface ProxyWiring {
  config: Pick<Config, 'dataDir' | 'domain' | 'proxyPort' | 'proxyH2cPort' | 'tlsCertPath' | 'tlsKeyPath'>;
  microvms: EndpointProxyOptions['microvms'];
  tokens: EndpointProxyOptions['tokens'];
  log: (line: string) => void;
  resumeTimeoutMs?: number;
}

export async function startEndpointProxy(wiring: ProxyWiring): Promise<StartedProxy> {
  const { config, log } = wiring;
  const tls = await ensureProxyTls({
    dataDir: config.dataDir, domain: config.domain,
    ...(config.tlsCertPath !== undefined && { certPath: config.tlsCertPath }),
    ...(config.tlsKeyPath !== undefined && { keyPath: config.tlsKeyPath }),
  });
  const proxy = new EndpointProxy({
    domain: config.domain, microvms: wiring.microvms, tokens: wiring.tokens, tls, log,
    ...(wiring.resumeTimeoutMs !== undefined && { resumeTimeoutMs: wiring.resumeTimeoutMs }),
  });
  const ports = await proxy.listen({ port: config.proxyPort, ...(config.proxyH2cPort !== undefined && { h2cPort: config.proxyH2cPort }) });
  const pattern = endpointUrl(config.domain, ports.port, '<microvmId>');
  log(`MicroVM endpoints on ${pattern} (HTTP/2 and HTTP/1.1; another guest port: https://<port>-<microvmId>.${config.domain}:${ports.port} or the X-Cocoon-Port header)`);
  if (ports.h2cPort !== undefined) log(`plain-text HTTP/1.1 and h2c on http://<microvmId>.${config.domain}:${ports.h2cPort}`);
  if (tls.caPath === undefined) {
    log(`TLS certificate: ${tls.certPath} (user-supplied)`);
    if (!coversDomain(tls.cert, config.domain)) log(`warning: ${tls.certPath} does not cover *.${config.domain}: clients will refuse it`);
  } else if (tls.created === 'ca') {
    log(`created a local certificate authority for the endpoints: ${tls.caPath} (its key stays in ${config.dataDir}/tls). Trust it once:`);
    log(`  curl:           curl --cacert ${tls.caPath} -H "X-Cocoon-Auth: <token>" ${pattern}/`);
    log(`  Debian/Ubuntu:  sudo cp ${tls.caPath} /usr/local/share/ca-certificates/cocoon.crt && sudo update-ca-certificates`);
    log('  browsers:       import it as a certificate authority (Chrome: Settings › Privacy and security › Security › Manage certificates; Firefox: Settings › Privacy & Security › Certificates › View Certificates › Authorities)');
  } else {
    log(`endpoint certificates from the local CA ${tls.caPath}${tls.created === 'leaf' ? ` (certificate for *.${config.domain} issued now)` : ''}; see docs/endpoints.md to trust it`);
  }
  return { proxy, ...ports, ...(tls.caPath !== undefined && { caPath: tls.caPath }) };
}
