/**
 * The one error class of specula. Every failure caused by bad input or state is a
 * SpeculaError with a machine-readable `code` and a message that names the argument
 * (or file), what was expected and what was received.
 */
export type ErrorCode =
  | 'E_ARG' // an argument is missing or of the wrong type
  | 'E_SHAPE' // array lengths or per-row counts do not match the dimensions
  | 'E_VALUE' // a value is out of range (parameters, token ids, non-finite logits, ...)
  | 'E_FORMAT' // a file is malformed
  | 'E_IO' // a file cannot be read or written
  | 'E_UNSUPPORTED' // valid but not supported (architecture, platform, missing native addon)
  | 'E_STATE' // the object is in the wrong state (disposed, out of memory, ...)
  | 'E_ABORTED'; // the work was cancelled through an AbortSignal

export class SpeculaError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SpeculaError';
    this.code = code;
  }
}

/** Replaces the (empty) native stack of an async failure with the caller's stack. */
export function withCallerStack(err: unknown, caller: Error): unknown {
  if (err instanceof Error && caller.stack) {
    const frames = caller.stack.split('\n').slice(1).join('\n');
    err.stack = `${err.name}: ${err.message}\n${frames}`;
  }
  return err;
}
