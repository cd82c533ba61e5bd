/** The Cocoon SDK: `new CocoonClient({ endpoint, apiKey })`. */
export { CocoonClient, DEFAULT_ENDPOINT, type CocoonClientOptions, type RequestOptions } from './client.ts';
export { CocoonApiError, isCocoonApiError, type ClientErrorCode } from './errors.ts';
export type * from './types.ts';
