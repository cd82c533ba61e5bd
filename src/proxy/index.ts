export { EndpointProxy, type EndpointProxyOptions } from './server.ts';
export { coversDomain, ensureProxyTls, tlsPaths, type ProxyTls } from './tls.ts';
export { endpointUrl } from './routing.ts';
