export { TokenService, MAX_EXPIRES_IN_MINUTES, type TokenClaims } from './service.ts';
export { allowsPort, portEntriesOf, portSetOf, MAX_PORT_ENTRIES, type PortEntry, type PortSet } from './ports.ts';
export { keyFilePath } from './keys.ts';
