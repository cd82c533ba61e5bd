export { buildApi, API_VERSION, type ApiDeps } from './server.ts';
