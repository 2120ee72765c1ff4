// Assertions on LlamaError codes, shared by the suites.
import { expect } from 'vitest';
import { LlamaError } from 'llama-addon';

/** Calls `fn`, expects it to throw a LlamaError with `code`, and returns the error. */
export function throwsWith(fn: () => unknown, code: string): LlamaError {
  let caught: unknown = null;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(LlamaError);
  expect((caught as LlamaError).code).toBe(code);
  return caught as LlamaError;
}

/** Expects `p` to reject with a LlamaError with `code`, and returns the error. */
export async function rejectsWith(p: Promise<unknown>, code: string): Promise<LlamaError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(LlamaError);
  expect((e as LlamaError).code).toBe(code);
  return e as LlamaError;
}
