// Flags several commands share (the model, where it runs, sampling), and what they turn into.
import type { GpuOption } from '../native/backends.js';
import type { GenerateOptions } from '../options/generate.js';
import type { LlamaModel } from '../core/model.js';
import { samplingFlagSpecs } from '../options/sampling.js';
import { choice, custom, int, intOrAuto, num, str, strs, type Flag, type Values } from './args.js';
import { loadingLine, transferLine } from './output.js';

/** The default most tokens of an answer of `chat` and `complete`: without a limit, a small model may never stop. */
export const DEFAULT_MAX_TOKENS = 512;

export const modelFlag = str({
  placeholder: 'FILE',
  required: true,
  description: 'the GGUF model: a path, hf:owner/repo/file.gguf or a URL (downloaded on first use)',
});

export const gpuFlag = choice({
  choices: ['auto', 'cuda', 'vulkan', 'metal', 'off'] as const,
  aliases: { cpu: 'off', false: 'off' },
  default: 'auto',
  group: 'Placement',
  description: 'GPU backend: the first that works here, one by name, or off (the CPU)',
});

export const gpuLayersFlag = custom<number | 'auto' | 'max'>({
  placeholder: 'N|auto|max',
  default: 'auto',
  group: 'Placement',
  expected: 'a non-negative integer, auto or max',
  description: 'layers to offload to the GPU: auto fits them to free memory',
  convert: (raw) => (raw === 'auto' || raw === 'max' ? raw : /^\d+$/.test(raw) ? Number(raw) : undefined),
});

export const rpcFlag = custom<string[]>({
  placeholder: 'HOST:PORT,...',
  group: 'Placement',
  expected: 'a comma-separated list of host:port (ports from 1 to 65535)',
  description: 'llama.cpp RPC servers (llama-addon rpc-server) to split the model across',
  convert: (raw) => {
    const list = raw.split(',').map((s) => s.trim()).filter(Boolean);
    const ok = list.length > 0 && list.every((e) => {
      const m = /^[^\s:]+:(\d{1,5})$/.exec(e);
      return m !== null && Number(m[1]) >= 1 && Number(m[1]) <= 65535;
    });
    return ok ? list : undefined;
  },
});

/** The flags of commands that load a model to generate with (`complete`, `chat`). */
/** Where a model runs: the context's size and threads, the GPU and RPC servers. */
export const runFlags = {
  'ctx-size': int({ min: 1, max: 1 << 24, defaultText: "the model's training context, at most 4096", description: 'tokens the context holds' }),
  threads: intOrAuto({ min: 1, max: 512, defaultText: "auto: up to the physical cores, adapting to the machine's load", description: 'CPU threads for generation' }),
  gpu: gpuFlag,
  'gpu-layers': gpuLayersFlag,
  rpc: rpcFlag,
};

export const generateModelFlags = {
  model: modelFlag,
  'max-tokens': int({ min: 1, max: 2 ** 31 - 1, default: DEFAULT_MAX_TOKENS, description: 'most tokens to generate for an answer' }),
  ...runFlags,
};

/** Sampling: one flag per option of lib/options/sampling.ts, with its range and the library's default. */
export const samplingFlags = {
  ...(Object.fromEntries(
    samplingFlagSpecs().map(({ flag, spec }) => {
      const common = { min: spec.min, max: spec.max, ...(spec.minExclusive ? { minExclusive: true } : {}), group: 'Sampling', description: spec.doc };
      // A default that reads as a word (the seed's "random") is left to the library.
      const f = spec.type === 'integer'
        ? spec.defaultText ? int({ ...common, defaultText: spec.defaultText }) : int({ ...common, default: spec.default })
        : spec.defaultText ? num({ ...common, defaultText: spec.defaultText }) : num({ ...common, default: spec.default });
      return [flag, f];
    }),
  ) as Record<string, Flag<number>>),
  stop: strs({ group: 'Sampling', description: 'stop when this text appears (not printed)' }),
};

export function generateOptions(v: Values<typeof samplingFlags> & { 'max-tokens': number }): GenerateOptions {
  const o: GenerateOptions = { maxTokens: v['max-tokens'] };
  for (const { flag, name } of samplingFlagSpecs()) {
    const value = (v as Record<string, unknown>)[flag];
    if (typeof value === 'number') o[name] = value;
  }
  if (v.stop.length) o.stop = v.stop;
  return o;
}

export const gpuOption = (v: 'auto' | 'cuda' | 'vulkan' | 'metal' | 'off'): GpuOption => (v === 'off' ? false : v);

/** A local path, or a hf:/URL reference downloaded into the cache first (with a progress line). */
export async function modelPath(ref: string): Promise<string> {
  if (!ref.startsWith('hf:') && !/^https?:\/\//.test(ref)) return ref;
  const { pullModel } = await import('../models/pull.js');
  const line = transferLine(`downloading ${ref}`);
  try {
    return (await pullModel(ref, { onProgress: (done, total) => line.update(done, total) })).path;
  } finally {
    line.end();
  }
}

/** Loads the model of `--model` with a loading bar on a terminal (cleared when done). */
export async function loadWithBar(
  v: Values<Pick<typeof generateModelFlags, 'model' | 'gpu' | 'gpu-layers' | 'rpc'>>,
): Promise<LlamaModel> {
  const { loadModel } = await import('../core/model.js');
  const path = await modelPath(v.model);
  const bar = await loadingLine(path);
  try {
    return await loadModel(path, {
      onProgress: bar.onProgress,
      gpu: gpuOption(v.gpu),
      gpuLayers: v['gpu-layers'],
      ...(v.rpc ? { rpcServers: v.rpc } : {}),
    });
  } finally {
    bar.end();
  }
}
