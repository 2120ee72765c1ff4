// LoRA adapters: loading them and the per-request adapter sets.
import type { NativeLora } from '../native/native.js';
import { invalid } from '../base/validate.js';

let nextId = 1;

/**
 * A LoRA adapter loaded for one model ({@link LlamaModel.loadLora}). Choose it per context
 * (`createContext({ lora })`) or per request (`generate(prompt, { lora })`), with a scale. It is freed with
 * its model.
 */
export class LlamaLora {
  /** @internal */
  readonly native: NativeLora;
  /** @internal distinguishes adapters in cache keys */
  readonly id = nextId++;
  /** The file it was loaded from. */
  readonly path: string;
  /** The adapter's GGUF metadata (scalar values, as text). */
  readonly metadata: Readonly<Record<string, string>>;

  /** @internal use {@link LlamaModel.loadLora} */
  constructor(native: NativeLora, path: string) {
    this.native = native;
    this.path = path;
    this.metadata = Object.freeze({ ...native.info().metadata });
  }
}

/** An adapter, or an adapter with a scale (default 1). */
export type LoraSpec = LlamaLora | { adapter: LlamaLora; scale?: number };

/** Checks a `lora` option: the native pairs and a key that identifies the set (for KV-cache reuse). */
export function parseLora(value: unknown, caller: Function): { pairs: Array<[NativeLora, number]>; key: string } {
  if (!Array.isArray(value)) throw invalid('lora', 'an array of adapters or { adapter, scale }', value, caller);
  const pairs: Array<[NativeLora, number]> = [];
  const keys: string[] = [];
  for (const spec of value as unknown[]) {
    const adapter = spec instanceof LlamaLora ? spec : (spec as { adapter?: unknown } | null)?.adapter;
    const scale = spec instanceof LlamaLora ? 1 : ((spec as { scale?: unknown }).scale ?? 1);
    if (!(adapter instanceof LlamaLora)) throw invalid('lora', 'adapters loaded with model.loadLora()', spec, caller);
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw invalid('lora', 'a finite scale', scale, caller);
    if (scale === 0) continue;
    pairs.push([adapter.native, scale]);
    keys.push(`${adapter.id}:${scale}`);
  }
  return { pairs, key: keys.sort().join(',') };
}
