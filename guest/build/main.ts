// `npm run build:guest [-- --debian] [--force]`: builds the guest artifacts into build/guest/.
import { parseArgs } from 'node:util';
import { ensureGuestArtifacts } from './artifacts.ts';
import { GuestBuildError } from './exec.ts';

const USAGE = `usage: npx tsx guest/build/main.ts [--debian] [--force]
  --debian   also build the Debian bookworm rootfs (first build downloads packages: minutes)
  --force    rebuild the requested artifacts even when cached`;

async function main(): Promise<number> {
  let values: { debian?: boolean; force?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      options: { debian: { type: 'boolean' }, force: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const startedMs = performance.now();
  const controller = new AbortController();
  // Ctrl-C stops the running tool; temporaries are reclaimed by the next build.
  process.once('SIGINT', () => controller.abort());
  process.once('SIGTERM', () => controller.abort());
  try {
    const artifacts = await ensureGuestArtifacts({
      debian: values.debian ?? false,
      force: values.force ?? false,
      signal: controller.signal,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    const seconds = ((performance.now() - startedMs) / 1000).toFixed(2);
    process.stderr.write(`guest artifacts ready in ${seconds} s (kernel ${artifacts.manifest.kernel.release})\n`);
    process.stdout.write(`${JSON.stringify({ kernelPath: artifacts.kernelPath, initramfsPath: artifacts.initramfsPath, rootfs: artifacts.rootfs }, null, 2)}\n`);
    return 0;
  } catch (error) {
    if (error instanceof GuestBuildError) {
      process.stderr.write(`${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

process.exitCode = await main();
