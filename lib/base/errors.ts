/**
 * Every code a {@link LlamaError} can have: the one list (the type, the check of native errors' codes and
 * the README's *Errors* table follow it). New codes may be added; existing ones never change meaning.
 */
export const LLAMA_ERROR_CODES = [
  'ERR_MODEL_NOT_FOUND',
  'ERR_INVALID_MODEL',
  'ERR_INVALID_ARGUMENT',
  'ERR_INVALID_STATE',
  'ERR_DISPOSED',
  'ERR_NO_SEQUENCE',
  'ERR_CONTEXT_FULL',
  'ERR_CONTEXT_CREATE',
  'ERR_ABORTED',
  'ERR_BUSY',
  'ERR_DECODE',
  'ERR_NATIVE_LOAD',
  'ERR_INVALID_TEMPLATE',
  'ERR_INVALID_MESSAGE',
  'ERR_INVALID_GRAMMAR',
  'ERR_INCOMPLETE_OUTPUT',
  'ERR_IO',
  'ERR_INVALID_ADAPTER',
  'ERR_QUANTIZE',
  'ERR_BACKEND_UNAVAILABLE',
  'ERR_INVALID_SCHEMA',
  'ERR_UNSUPPORTED_SCHEMA',
  'ERR_SCHEMA_MISMATCH',
  'ERR_LIMIT_EXCEEDED',
  'ERR_TOKENIZE',
  'ERR_NATIVE',
] as const;

/** Stable error codes of {@link LlamaError}. */
export type LlamaErrorCode = (typeof LLAMA_ERROR_CODES)[number];

/**
 * The one error class of llama-addon. `code` is stable and meant for programs; `message` says what was
 * expected and what was received. The stack trace points at the caller's code.
 */
export class LlamaError extends Error {
  /** Stable machine-readable code, for example `ERR_MODEL_NOT_FOUND`. */
  readonly code: LlamaErrorCode;

  constructor(code: LlamaErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LlamaError';
    this.code = code;
  }
}

const knownCodes = new Set<string>(LLAMA_ERROR_CODES);

/** `code` if it is one of {@link LLAMA_ERROR_CODES}, else ERR_NATIVE (an error without a known code). */
export function knownCode(code: unknown): LlamaErrorCode {
  return typeof code === 'string' && knownCodes.has(code) ? (code as LlamaErrorCode) : 'ERR_NATIVE';
}

/**
 * Turns an error thrown by the native addon (an Error with a `code` property) into a LlamaError whose
 * stack starts at `caller`, so users see their own call site rather than the library's internals.
 */
export function toLlamaError(e: unknown, caller?: Function): LlamaError {
  if (e instanceof LlamaError) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = knownCode(err?.code);
  let message = typeof err?.message === 'string' ? err.message : String(e);
  // A C++ exception without a code reached the addon's boundary (lib's own checks come first): say so.
  if (code === 'ERR_NATIVE') {
    message = /bad_alloc/.test(message)
      ? `Out of memory in native code (${message})`
      : `Unexpected error in native code: ${message}`;
  }
  const out = new LlamaError(code, message, { cause: e });
  if (caller) Error.captureStackTrace(out, caller);
  return out;
}

/**
 * The one way to make a LlamaError to throw: its code, a message that says what was expected and what was
 * received, and a stack that starts at `caller` (the public method the user called).
 */
export function llamaError(code: LlamaErrorCode, message: string, caller?: Function): LlamaError {
  const err = new LlamaError(code, message);
  if (caller) Error.captureStackTrace(err, caller);
  return err;
}

/** Runs `fn`, converting native errors to LlamaError with the stack of `caller`. */
export function callNative<T>(caller: Function, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toLlamaError(e, caller);
  }
}

/**
 * Records the stack at `caller` now, for work that finishes later: the returned function gives an error
 * (converted to a LlamaError) that stack, so an asynchronous failure still points at the user's call.
 */
export function callSite(caller: Function): (e: unknown) => LlamaError {
  const site: { stack?: string } = {};
  Error.captureStackTrace(site, caller);
  return (e) => {
    const err = toLlamaError(e);
    err.stack = `${err.name}: ${err.message}\n${(site.stack ?? '').split('\n').slice(1).join('\n')}`;
    return err;
  };
}
