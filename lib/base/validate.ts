// Option checks shared by every API: one wording for every validation error.
import { LlamaError, llamaError } from './errors.js';

// One wording for every validation error: `Invalid option "name": expected ..., received ...`.

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (value instanceof Int32Array) return `an Int32Array of length ${value.length}`;
  if (typeof value === 'object') return `an object (${Object.prototype.toString.call(value).slice(8, -1)})`;
  return typeof value;
}

export function invalid(name: string, expected: string, received: unknown, caller?: Function): LlamaError {
  return llamaError('ERR_INVALID_ARGUMENT', `Invalid option "${name}": expected ${expected}, received ${describe(received)}`, caller);
}

/**
 * Token ids given by a caller: an Int32Array or an array of integers, each in [0, vocabSize) when a
 * vocabulary size is given. Every caller's token list goes through here, so that a bad item is named by
 * its index and its own value (not the value it would wrap to in an Int32Array).
 */
export function tokenIds(
  name: string,
  value: unknown,
  vocabSize: number | undefined,
  caller: Function,
  expected = 'an Int32Array or an array of integer token ids',
): Int32Array {
  const range = vocabSize === undefined ? 'an integer token id' : `a token id from 0 to ${vocabSize - 1}`;
  const badItem = (i: number, v: unknown): LlamaError =>
    llamaError('ERR_INVALID_ARGUMENT', `Invalid option "${name}": expected ${range} at index ${i}, received ${describe(v)}`, caller);
  if (value instanceof Int32Array) {
    if (vocabSize !== undefined) {
      for (let i = 0; i < value.length; i++) if (value[i]! < 0 || value[i]! >= vocabSize) throw badItem(i, value[i]);
    }
    return value;
  }
  if (!Array.isArray(value)) throw invalid(name, expected, value, caller);
  const out = new Int32Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const v: unknown = value[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff || (vocabSize !== undefined && v >= vocabSize)) {
      throw badItem(i, v);
    }
    out[i] = v;
  }
  return out;
}

/** Checks that `options` is undefined or a plain object and has no keys outside `known`. */
export function checkOptions(
  what: string,
  options: unknown,
  known: readonly string[],
  caller: Function,
): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalid(what, 'an object', options, caller);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw llamaError(
        'ERR_INVALID_ARGUMENT',
        `Invalid option "${key}" for ${what}: expected one of ${known.join(', ')}`,
        caller,
      );
    }
  }
  return options as Record<string, unknown>;
}

function optRange(
  o: Record<string, unknown>,
  name: string,
  min: number,
  max: number,
  integer: boolean,
  caller: Function,
): number | undefined {
  const v = o[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || Number.isNaN(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw invalid(name, `${integer ? 'an integer' : 'a number'} from ${min} to ${max}`, v, caller);
  }
  return v;
}

/** An optional integer option within [min, max]. */
export function optInteger(o: Record<string, unknown>, name: string, min: number, max: number, caller: Function): number | undefined {
  return optRange(o, name, min, max, true, caller);
}

/** An optional number option within [min, max]. */
/** An integer option in [min, max], or one of the given keywords (`'auto'`); undefined when absent. */
export function optIntegerOr<K extends string>(
  o: Record<string, unknown>,
  name: string,
  min: number,
  max: number,
  keywords: readonly K[],
  caller: Function,
): number | K | undefined {
  const v = o[name];
  if (v === undefined || keywords.includes(v as K)) return v as K | undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(name, `an integer from ${min} to ${max}, or ${keywords.map((k) => `"${k}"`).join(' or ')}`, v, caller);
  }
  return v;
}

export function optNumber(o: Record<string, unknown>, name: string, min: number, max: number, caller: Function): number | undefined {
  return optRange(o, name, min, max, false, caller);
}

export function optBoolean(o: Record<string, unknown>, name: string, caller: Function): boolean | undefined {
  const v = o[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw invalid(name, 'a boolean', v, caller);
  return v;
}

export function optFunction<F extends Function>(o: Record<string, unknown>, name: string, caller: Function): F | undefined {
  const v = o[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'function') throw invalid(name, 'a function', v, caller);
  return v as F;
}

export function optSignal(o: Record<string, unknown>, name: string, caller: Function): AbortSignal | undefined {
  const v = o[name];
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) throw invalid(name, 'an AbortSignal', v, caller);
  return v;
}

/**
 * `value` as JSON text, for values the library writes into prompts (tool results, tool-call arguments):
 * ERR_INVALID_ARGUMENT for what JSON cannot hold (a cycle, a BigInt), ERR_LIMIT_EXCEEDED for nesting too
 * deep to write.
 */
export function jsonArgument(value: unknown, name: string, caller: Function): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    if (e instanceof RangeError) throw llamaError('ERR_LIMIT_EXCEEDED', `Invalid option "${name}": it nests too deep to be written as JSON`, caller);
    throw invalid(name, `a value JSON can hold (${(e as Error).message})`, value, caller);
  }
  if (text === undefined) throw invalid(name, 'a value JSON can hold', value, caller);
  return text;
}
