/**
 * One registry of error codes. Clients branch on `code`, never on the message; the HTTP status and
 * CLI exit code of each code are decided here and nowhere else.
 */
export const errorCodes = {
  'internal': { httpStatus: 500, exitCode: 1 },
  'config.invalid': { httpStatus: 400, exitCode: 2 },
  'host.missing_dependency': { httpStatus: 500, exitCode: 3 },
  'vmm.start_failed': { httpStatus: 500, exitCode: 4 },
  'vmm.exited': { httpStatus: 500, exitCode: 4 },
  'vmm.timeout': { httpStatus: 504, exitCode: 4 },
  'vmm.qmp_error': { httpStatus: 500, exitCode: 4 },
  'vmm.snapshot_failed': { httpStatus: 500, exitCode: 4 },
  'vmm.restore_failed': { httpStatus: 500, exitCode: 4 },
  'vmm.incompatible_snapshot': { httpStatus: 409, exitCode: 4 },
  'vmm.adopt_failed': { httpStatus: 500, exitCode: 4 },
  'vm.invalid_state': { httpStatus: 409, exitCode: 5 },
  'vm.not_found': { httpStatus: 404, exitCode: 5 },
  'vm.capacity': { httpStatus: 503, exitCode: 5 },
  'vm.launch_failed': { httpStatus: 500, exitCode: 5 },
  'vm.egress_unavailable': { httpStatus: 409, exitCode: 5 },
  'guest.protocol_violation': { httpStatus: 502, exitCode: 6 },
  'guest.disconnected': { httpStatus: 502, exitCode: 6 },
  'guest.timeout': { httpStatus: 504, exitCode: 6 },
  'guest.request_failed': { httpStatus: 502, exitCode: 6 },
  'artifact.unsupported_uri': { httpStatus: 400, exitCode: 2 },
  'artifact.not_found': { httpStatus: 400, exitCode: 2 },
  'artifact.fetch_failed': { httpStatus: 502, exitCode: 7 },
  'artifact.invalid_zip': { httpStatus: 400, exitCode: 2 },
  'artifact.unsafe_path': { httpStatus: 400, exitCode: 2 },
  'artifact.symlink': { httpStatus: 400, exitCode: 2 },
  'artifact.too_large': { httpStatus: 413, exitCode: 2 },
  'artifact.too_many_files': { httpStatus: 413, exitCode: 2 },
  'artifact.compression_ratio': { httpStatus: 400, exitCode: 2 },
  'artifact.no_dockerfile': { httpStatus: 400, exitCode: 2 },
  'dockerfile.syntax': { httpStatus: 400, exitCode: 2 },
  'dockerfile.unsupported_instruction': { httpStatus: 400, exitCode: 2 },
  'dockerfile.unknown_base': { httpStatus: 400, exitCode: 2 },
  'dockerfile.unknown_stage': { httpStatus: 400, exitCode: 2 },
  'dockerfile.invalid': { httpStatus: 400, exitCode: 2 },
  'dockerfile.copy_source_missing': { httpStatus: 400, exitCode: 2 },
  'image.not_found': { httpStatus: 404, exitCode: 8 },
  'image.build_failed': { httpStatus: 422, exitCode: 8 },
  'image.readiness_timeout': { httpStatus: 422, exitCode: 8 },
  'image.in_use': { httpStatus: 409, exitCode: 8 },
  'image.invalid_state': { httpStatus: 409, exitCode: 8 },
  'auth.missing_key': { httpStatus: 401, exitCode: 9 },
  'auth.invalid_key': { httpStatus: 401, exitCode: 9 },
  'auth.forbidden': { httpStatus: 403, exitCode: 9 },
  'request.invalid': { httpStatus: 400, exitCode: 2 },
  'request.unknown_field': { httpStatus: 400, exitCode: 2 },
  'request.too_large': { httpStatus: 413, exitCode: 2 },
  'request.headers_too_large': { httpStatus: 431, exitCode: 2 },
  'request.unsupported_media_type': { httpStatus: 415, exitCode: 2 },
  'route.not_found': { httpStatus: 404, exitCode: 2 },
  'token.missing': { httpStatus: 401, exitCode: 10 },
  'token.invalid': { httpStatus: 401, exitCode: 10 },
  'token.expired': { httpStatus: 401, exitCode: 10 },
  'token.wrong_microvm': { httpStatus: 403, exitCode: 10 },
  'token.port_not_allowed': { httpStatus: 403, exitCode: 10 },
  'proxy.unknown_host': { httpStatus: 404, exitCode: 11 },
  'proxy.port_not_exposed': { httpStatus: 404, exitCode: 11 },
  'proxy.vm_not_running': { httpStatus: 409, exitCode: 11 },
  'proxy.resume_timeout': { httpStatus: 503, exitCode: 11 },
  'proxy.upstream_failed': { httpStatus: 502, exitCode: 11 },
} as const satisfies Record<string, { httpStatus: number; exitCode: number }>;

export type ErrorCode = keyof typeof errorCodes;

export class AppError extends Error {
  override readonly name = 'AppError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isAppError(error: unknown, code?: ErrorCode): error is AppError {
  return error instanceof AppError && (code === undefined || error.code === code);
}
