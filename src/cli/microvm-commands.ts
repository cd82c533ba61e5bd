/** The MicroVM commands: run (optionally waiting until RUNNING), get, list, suspend, resume, terminate, auth tokens. */
import type { Command } from 'commander';
import {
  CocoonApiError,
  type CreateMicroVmAuthTokenRequest,
  type ListMicroVmsFilter,
  type MicroVm,
  type MicroVmState,
  type EgressPolicy,
  type RunMicroVmRequest,
} from '../client/index.ts';
import { parseAllowedPorts, parseInteger, parseJsonObject } from './args.ts';
import { contextOf, type Context } from './context.ts';

const POLL_MS = 500;
const WAIT_LIMIT_MS = 15 * 60_000;
/** States a MicroVM passes through on its own; --wait polls until it leaves them. */
const TRANSIENT: readonly MicroVmState[] = ['PENDING', 'SUSPENDING', 'RESUMING', 'TERMINATING'];

interface RunOptions {
  imageIdentifier: string;
  idlePolicy?: string;
  maximumDurationInSeconds?: string;
  runHookPayload?: string;
  egressPolicy?: string;
  wait?: boolean;
}

export function registerMicroVmCommands(program: Command): void {
  program
    .command('run-microvm')
    .description('launch a MicroVM from an image snapshot (the latest ACTIVE version unless NAME:VERSION)')
    .requiredOption('--image-identifier <name[:version]>', 'NAME, NAME:VERSION or the image arn')
    .option('--idle-policy <json>', '{"maxIdleDurationSeconds":900,"suspendedDurationSeconds":300,"autoResumeEnabled":true}')
    .option('--maximum-duration-in-seconds <n>', 'at most 28800')
    .option('--run-hook-payload <text>', "the body of the app's run hook after launch")
    .option('--egress-policy <json>', '{"mode":"none"} (default) or {"mode":"internet","allow":[{"cidr":"203.0.113.0/24","ports":[443]}]}')
    .option('--wait', 'poll until the MicroVM is RUNNING; exit non-zero if it FAILED')
    .action(async (options: RunOptions, command: Command) => {
      const ctx = contextOf(command);
      const request: RunMicroVmRequest = {
        imageIdentifier: options.imageIdentifier,
        ...(options.idlePolicy !== undefined && { idlePolicy: parseJsonObject('--idle-policy', options.idlePolicy) }),
        ...(options.maximumDurationInSeconds !== undefined && {
          maximumDurationInSeconds: parseInteger('--maximum-duration-in-seconds', options.maximumDurationInSeconds),
        }),
        ...(options.runHookPayload !== undefined && { runHookPayload: options.runHookPayload }),
        ...(options.egressPolicy !== undefined && { egress: parseJsonObject('--egress-policy', options.egressPolicy) as unknown as EgressPolicy }),
      };
      // The API answers once the MicroVM is RUNNING; --wait also covers a server that answers earlier.
      const microvm = await ctx.client.runMicroVm(request);
      await printMaybeWaiting(ctx, microvm, options.wait === true, 'vm.launch_failed');
    });

  program
    .command('get-microvm')
    .description('one MicroVM')
    .requiredOption('--microvm-id <id>', 'mvm-…')
    .action(async (options: { microvmId: string }, command: Command) => {
      const ctx = contextOf(command);
      ctx.print(await ctx.client.getMicroVm(options.microvmId));
    });

  program
    .command('list-microvms')
    .description('your MicroVMs')
    .option('--state <state>', 'only MicroVMs in this state (RUNNING, SUSPENDED, …)')
    .option('--image-version <version>', 'only MicroVMs of this image version')
    .action(async (options: { state?: string; imageVersion?: string }, command: Command) => {
      const ctx = contextOf(command);
      const filter: ListMicroVmsFilter = {
        ...(options.state !== undefined && { state: options.state.toUpperCase() as MicroVmState }),
        ...(options.imageVersion !== undefined && { imageVersion: options.imageVersion }),
      };
      ctx.print(await ctx.client.listMicroVms(filter));
    });

  const actions = [
    ['suspend-microvm', 'suspend a running MicroVM to disk', (ctx: Context, id: string) => ctx.client.suspendMicroVm(id)],
    ['resume-microvm', 'resume a suspended MicroVM', (ctx: Context, id: string) => ctx.client.resumeMicroVm(id)],
    ['terminate-microvm', 'terminate a MicroVM', (ctx: Context, id: string) => ctx.client.terminateMicroVm(id)],
  ] as const;
  for (const [name, description, act] of actions) {
    program
      .command(name)
      .description(description)
      .requiredOption('--microvm-id <id>', 'mvm-…')
      .option('--wait', 'poll until the transition is over; exit non-zero if the MicroVM FAILED')
      .action(async (options: { microvmId: string; wait?: boolean }, command: Command) => {
        const ctx = contextOf(command);
        await printMaybeWaiting(ctx, await act(ctx, options.microvmId), options.wait === true, 'vm.invalid_state');
      });
  }

  program
    .command('create-microvm-auth-token')
    .description("mint an auth token for a MicroVM's endpoint; send authToken as headers (X-Cocoon-Auth)")
    .requiredOption('--microvm-id <id>', 'mvm-…')
    .option('--expiration-in-minutes <n>', '1–60 (default 60)')
    .option('--allowed-ports <entries...>', "port=8080, fromPort=8000,toPort=8100 or all=true; several allowed (default: the image's app port)")
    .action(async (options: { microvmId: string; expirationInMinutes?: string; allowedPorts?: string[] }, command: Command) => {
      const ctx = contextOf(command);
      const request: CreateMicroVmAuthTokenRequest = {
        ...(options.expirationInMinutes !== undefined && { expirationInMinutes: parseInteger('--expiration-in-minutes', options.expirationInMinutes) }),
        ...(options.allowedPorts !== undefined && { allowedPorts: options.allowedPorts.flatMap((entry) => parseAllowedPorts(entry)) }),
      };
      ctx.print(await ctx.client.createMicroVmAuthToken(options.microvmId, request));
    });

  program
    .command('rotate-auth-token-keys')
    .description('admin: a new key mints auth tokens; tokens of the previous key stay valid until they expire')
    .action(async (_options: unknown, command: Command) => {
      const ctx = contextOf(command);
      ctx.print(await ctx.client.rotateAuthTokenKeys());
    });
}

/** Prints the MicroVM, after waiting for it to settle if asked; FAILED is an error with `failedCode`. */
async function printMaybeWaiting(ctx: Context, microvm: MicroVm, wait: boolean, failedCode: string): Promise<void> {
  if (!wait) return ctx.print(microvm);
  const final = await waitWhileTransient(ctx, microvm);
  ctx.print(final);
  if (final.state === 'FAILED') {
    throw new CocoonApiError(failedCode, `${final.microvmId} FAILED: ${final.stateReason ?? 'no reason recorded'}`, 0, { microvmId: final.microvmId });
  }
}

async function waitWhileTransient(ctx: Context, microvm: MicroVm): Promise<MicroVm> {
  const deadline = Date.now() + WAIT_LIMIT_MS;
  let current = microvm;
  while (TRANSIENT.includes(current.state)) {
    if (Date.now() > deadline) throw new CocoonApiError('vmm.timeout', `${current.microvmId} still ${current.state} after ${WAIT_LIMIT_MS / 60_000} minutes`, 0);
    ctx.progress(`${current.microvmId}: ${current.state}`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    current = await ctx.client.getMicroVm(current.microvmId);
  }
  ctx.progress(`${current.microvmId}: ${current.state}`);
  return current;
}
