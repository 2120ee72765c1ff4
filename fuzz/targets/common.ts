// What fuzz targets share: the result of a case, the worker's environment, and helpers that turn a step's
// outcome into a result.
import type { Rng } from '../prng.js';

/** What one case ended with, as the worker reports it. */
export interface CaseResult {
  /** ok: it worked; expected: a LlamaError with an allowed code; unexpected: any other error; wrong: a wrong answer. */
  status: 'ok' | 'expected' | 'unexpected' | 'wrong';
  /** The step that ended the case (load, tokenize, complete, ...). */
  op: string;
  /** The error code (or error name), for errors. */
  code?: string;
  message?: string;
}

export type Lib = typeof import('../../lib/index.js');

/** What a target's `run` gets in the worker process. */
export interface Env {
  lib: Lib;
  /** A temporary folder of this worker (removed when it exits). */
  tmp: string;
  /** Per-worker cache (loaded models and the like), kept between cases. */
  cache: Map<string, unknown>;
}

export interface Target<I = any> {
  name: string;
  /** Longest a case may take before it counts as a hang (model loads of a fresh worker get extra time). */
  timeoutMs: number;
  /** What the fuzz target does, in one line (for --list and the summary). */
  description: string;
  generate(r: Rng): I;
  run(input: I, env: Env): Promise<CaseResult>;
  /** Smaller variants of an input, tried in order when minimizing a finding. */
  shrink?(input: I): I[];
}

let stepListener: ((op: string) => void) | null = null;

/** The worker hears of each step as it starts, so that a crash or a hang can be blamed on it. */
export function onStep(fn: (op: string) => void): void {
  stepListener = fn;
}

export class Stop {
  constructor(readonly result: CaseResult) {}
}

function describeError(e: unknown): { code: string; message: string } {
  const err = e as { code?: unknown; name?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' ? err.code : typeof err?.name === 'string' ? err.name : typeof e;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return { code, message: message.length > 600 ? `${message.slice(0, 600)}...` : message };
}

/**
 * Runs one step of a case. A LlamaError with one of `allowed` codes ends the case as expected; any other
 * error ends it as unexpected (throws Stop, which the target's run turns into its result via {@link runSteps}).
 */
export async function step<T>(op: string, allowed: readonly string[], fn: () => T | Promise<T>): Promise<T> {
  stepListener?.(op);
  try {
    return await fn();
  } catch (e) {
    if (e instanceof Stop) throw e;
    const { code, message } = describeError(e);
    const isLlama = (e as { name?: unknown })?.name === 'LlamaError';
    throw new Stop({ status: isLlama && allowed.includes(code) ? 'expected' : 'unexpected', op, code, message });
  }
}

/** Ends the case with a wrong answer. */
export function wrong(op: string, message: string): never {
  throw new Stop({ status: 'wrong', op, message });
}

/** Runs a target's steps; a Stop becomes the result, and finishing is ok. */
export async function runSteps(op: string, fn: () => Promise<void>): Promise<CaseResult> {
  try {
    await fn();
    return { status: 'ok', op };
  } catch (e) {
    if (e instanceof Stop) return e.result;
    const { code, message } = describeError(e);
    return { status: 'unexpected', op: `${op} (harness)`, code, message };
  }
}

/**
 * Inputs keep long repetitive strings compact: `{ $repeat: s, times: n }` is `s` n times and
 * `{ $concat: [...] }` joins its parts. The worker expands them before a case runs.
 */
export type Compact = string | { $repeat: Compact; times: number } | { $concat: Compact[] };

export function expand<T>(v: T): T {
  if (Array.isArray(v)) return v.map(expand) as T;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if ('$repeat' in o && typeof o.times === 'number') return (expand(o.$repeat) as string).repeat(o.times) as T;
    if ('$concat' in o && Array.isArray(o.$concat)) return (o.$concat as unknown[]).map((p) => expand(p) as string).join('') as T;
    if ('$nest' in o && typeof o.depth === 'number') return nest(o.$nest as string, o.depth, expand(o.leaf)) as T;
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, expand(x)])) as T;
  }
  return v;
}

/**
 * `{ $nest: kind, depth, leaf }`: a JSON schema nested `depth` levels deep (kept compact in inputs, since
 * JSON.stringify itself cannot write very deep values).
 */
function nest(kind: string, depth: number, leaf: unknown): unknown {
  let s = leaf;
  for (let i = 0; i < depth; i++) {
    s = kind === 'array' ? { type: 'array', items: s } : kind === 'object' ? { type: 'object', properties: { a: s }, required: ['a'] } : kind === 'anyOf' ? { anyOf: [s] } : kind === 'list' ? [s] : { a: s };
  }
  return s;
}

/** Smaller versions of a string: halves, quarters, ... removed, then single characters for short strings. */
export function shrinkString(s: string): string[] {
  const chars = Array.from(s);
  const out: string[] = [];
  if (chars.length === 0) return out;
  for (let n = 2; n <= Math.min(chars.length, 16); n *= 2) {
    const size = Math.ceil(chars.length / n);
    for (let i = 0; i < chars.length; i += size) out.push(chars.slice(0, i).concat(chars.slice(i + size)).join(''));
  }
  if (chars.length <= 12) for (let i = 0; i < chars.length; i++) out.push(chars.slice(0, i).concat(chars.slice(i + 1)).join(''));
  return [...new Set(out)].filter((x) => x !== s);
}

/** Smaller versions of a Compact string: shorter repeats first, then the expanded text's shrinks when short. */
export function shrinkCompact(c: Compact): Compact[] {
  if (typeof c === 'string') return shrinkString(c);
  if ('$repeat' in c) {
    const out: Compact[] = [];
    if (c.times > 1) out.push({ ...c, times: Math.floor(c.times / 2) }, { ...c, times: Math.floor(c.times / 10) || 1 });
    for (const r of shrinkCompact(c.$repeat)) out.push({ ...c, $repeat: r });
    return out;
  }
  const parts = c.$concat;
  const out: Compact[] = [];
  for (let i = 0; i < parts.length; i++) out.push({ $concat: parts.slice(0, i).concat(parts.slice(i + 1)) });
  for (let i = 0; i < parts.length; i++) for (const p of shrinkCompact(parts[i]).slice(0, 4)) out.push({ $concat: parts.map((x, j) => (j === i ? p : x)) });
  return out;
}

/** The text a Compact stands for. */
export function text(c: Compact): string {
  return expand(c) as unknown as string;
}
