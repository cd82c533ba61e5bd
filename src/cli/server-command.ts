/**
 * `cocoon server`: runs Cocoon's server in the foreground on its embedded defaults (SQLite and
 * files under the data directory, API on loopback) until SIGINT/SIGTERM. Loaded only when used, so
 * the client commands stay light.
 */
import type { Command } from 'commander';
import { loadConfig } from '../config/config.ts';
import { parseInteger } from './args.ts';

export function registerServerCommand(program: Command): void {
  program
    .command('server')
    .description('run the Cocoon server (API, MicroVM lifecycle and endpoints) in the foreground until Ctrl-C')
    .option('--data-dir <dir>', 'where Cocoon keeps everything (env COCOON_DATA_DIR, default ./.cocoon)')
    .option('--port <port>', 'API port on 127.0.0.1 (env COCOON_API_PORT, default 8787)')
    .option('--proxy-port <port>', 'HTTPS port of the MicroVM endpoints on 127.0.0.1 (env COCOON_PROXY_PORT, default 8443)')
    .action(async (options: { dataDir?: string; port?: string; proxyPort?: string }) => {
      const { DEFAULT_API_PORT, startServer } = await import('../main/server.ts');
      const config = loadConfig({
        ...(options.dataDir !== undefined && { dataDir: options.dataDir }),
        ...(options.proxyPort !== undefined && { proxyPort: parseInteger('--proxy-port', options.proxyPort) }),
      });
      const portText = options.port ?? process.env.COCOON_API_PORT;
      const apiPort = portText === undefined ? DEFAULT_API_PORT : parseInteger('--port', portText);
      const server = await startServer({ config, apiPort, log: (line) => console.log(line) });
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      // Like a container runtime's live restore: the MicroVMs outlive a restart of the server.
      await server.close({ keepMicroVms: true });
    });
}
