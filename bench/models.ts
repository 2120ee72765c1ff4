// The models the bench runs: the tiny real models from ../shared/models, which expose per-token overhead,
// and realistic sizes made by our own generator (random weights do not change speed).
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { syntheticParameterCount, writeSyntheticLlama, type SyntheticLlamaOptions } from '../lib/gguf/index.js';

export const benchRoot = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(benchRoot, '..');
const modelDir = process.env.BENCH_MODELS_DIR ? resolve(process.env.BENCH_MODELS_DIR) : join(benchRoot, 'models');
export const sharedDir = process.env.BENCH_SHARED_MODELS ? resolve(process.env.BENCH_SHARED_MODELS) : resolve(repoRoot, '..', 'shared', 'models');
const llamaCppDir = process.env.LLAMA_CPP_DIR ? resolve(process.env.LLAMA_CPP_DIR) : join(repoRoot, 'deps', 'llama.cpp');

export interface BenchModel {
  id: string;
  description: string;
  /** Resolves to the model's path, making it first when it is synthetic. */
  path(): Promise<string>;
}

function sharedModel(id: string, file: string, description: string): BenchModel {
  return {
    id,
    description,
    async path() {
      const p = join(sharedDir, file);
      if (!existsSync(p)) throw new Error(`${p} is missing (the bench needs ../shared/models beside the project)`);
      return p;
    },
  };
}

function syntheticModel(id: string, description: string, o: Omit<SyntheticLlamaOptions, 'vocabFrom'>): BenchModel {
  return {
    id,
    description: `${description}, ~${Math.round(syntheticParameterCount({ ...o, vocabSize: 32000 }) / 1e6)}M parameters, random weights`,
    async path() {
      const p = join(modelDir, `${id}.gguf`);
      if (existsSync(p) && statSync(p).size > 0) return p;
      mkdirSync(modelDir, { recursive: true });
      console.error(`[bench] writing ${p} (first use only)`);
      const tmp = p + '.partial';
      await writeSyntheticLlama(tmp, { ...o, vocabFrom: join(llamaCppDir, 'models', 'ggml-vocab-llama-spm.gguf'), name: id });
      (await import('node:fs')).renameSync(tmp, p);
      return p;
    },
  };
}

export const models: BenchModel[] = [
  sharedModel('stories260k', 'stories260k.gguf', 'llama2.c TinyStories 260K, F32 (real)'),
  sharedModel('tinystories-656k-q8_0', 'tinystories-656k-q8_0.gguf', 'TinyStories 656K, Q8_0 (real)'),
  syntheticModel('llama-415m-q8_0', 'llama-shaped Q8_0 (n_embd 896, 24 layers, 14 heads, 2 KV heads, FFN 4864, 32000-token SPM vocab)', {
    embeddingLength: 896, layers: 24, heads: 14, headsKv: 2, feedForwardLength: 4864, contextLength: 4096, type: 'q8_0', seed: 415,
  }),
  syntheticModel('llama-1b-q4_0', 'llama-shaped Q4_0 (n_embd 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192, 32000-token SPM vocab)', {
    embeddingLength: 2048, layers: 16, heads: 32, headsKv: 8, feedForwardLength: 8192, contextLength: 4096, type: 'q4_0', seed: 1000,
  }),
];
