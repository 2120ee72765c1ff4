// Where the test models come from: ../shared/models (real tiny models), the pinned llama.cpp source
// (tokenizer vocabularies with test vectors), and synthetic models written by our own GGUF writer.
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'vitest';
import { writeSyntheticLlama, type SyntheticLlamaOptions } from '../../lib/gguf/index.js';
import { GgufType } from '../../lib/gguf/types.js';
import { getBackendInfo } from '../../lib/index.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedModels = resolve(repoRoot, '..', 'shared', 'models');
export const fixtures = join(repoRoot, 'test', '.fixtures');
export const llamaCppDir = process.env.LLAMA_CPP_DIR ? resolve(process.env.LLAMA_CPP_DIR) : join(repoRoot, 'deps', 'llama.cpp');
export const vocabDir = join(llamaCppDir, 'models');

export const hasShared = existsSync(join(sharedModels, 'stories260k.gguf'));

/** Path of a model in ../shared/models. */
export function shared(name: string): string {
  return join(sharedModels, name);
}

/**
 * `describe` for tests that need ../shared/models: skipped with a message where it is missing, except
 * under CI, where its absence is a failure.
 */
export function describeShared(name: string, fn: () => void): void {
  if (hasShared) {
    describe(name, fn);
  } else if (process.env.CI) {
    describe(name, () => {
      it('needs ../shared/models', () => {
        throw new Error(`CI is set but ${sharedModels} is missing: the test models must be beside the project`);
      });
    });
  } else {
    console.warn(`[llama-addon tests] skipping "${name}": ${sharedModels} is missing`);
    describe.skip(name, fn);
  }
}

/** Path of a tokenizer vocabulary shipped with llama.cpp's source (models/ggml-vocab-*.gguf). */
export function vocab(name: string): string {
  return join(vocabDir, `ggml-vocab-${name}.gguf`);
}

const made = new Map<string, Promise<string>>();

/** A synthetic llama model with random weights, written once per test run into test/.fixtures. */
export function synthetic(name: string, options: Omit<SyntheticLlamaOptions, 'vocabFrom'> & { vocab?: string }): Promise<string> {
  const key = name;
  let p = made.get(key);
  if (!p) {
    p = (async () => {
      mkdirSync(fixtures, { recursive: true });
      const path = join(fixtures, `${name}.gguf`);
      const { vocab: v, ...rest } = options;
      await writeSyntheticLlama(path, { vocabFrom: vocab(v ?? 'llama-spm'), ...rest });
      return path;
    })();
    made.set(key, p);
  }
  return p;
}

/**
 * A small synthetic model whose file carries `template` as its chat template (tokenizer.chat_template), with
 * the given vocabulary (default phi-3): written afresh to test/.fixtures/<name>.gguf on every call.
 */
export async function modelWithTemplate(name: string, template: string, vocabName = 'phi-3'): Promise<string> {
  mkdirSync(fixtures, { recursive: true });
  const path = join(fixtures, `${name}.gguf`);
  await writeSyntheticLlama(path, {
    vocabFrom: vocab(vocabName), embeddingLength: 32, layers: 1, heads: 2, headsKv: 1, feedForwardLength: 64, type: 'f16', seed: 3,
    metadata: [{ key: 'tokenizer.chat_template', type: GgufType.STRING, value: template }],
  });
  return path;
}

/** The small synthetic model most tests use: llama-shaped, 32000-token SPM vocabulary, random weights. */
export function tinySynthetic(): Promise<string> {
  return synthetic('tiny-q8', { embeddingLength: 64, layers: 2, heads: 4, headsKv: 2, feedForwardLength: 128, type: 'q8_0', seed: 7 });
}

/**
 * Whether models run on a GPU backend here (the CUDA build on the GPU machine). GPU kernels round
 * differently for different batch shapes, so results that are bit-identical on the CPU (a text embedded in a
 * batch or alone, tokens verified several at a time by speculative decoding) agree there only closely.
 */
export function onGpu(): boolean {
  return getBackendInfo().gpuModules.some((m) => m.state === 'loaded');
}

/** Number of leading tokens two outputs share. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}
