// A test's tiny model and context (tinySynthetic, 256 tokens, one sequence), loaded before its tests and
// disposed after them.
import { afterAll, beforeAll } from 'vitest';
import { loadModel, type LlamaContext, type LlamaModel } from 'llama-addon';
import { tinySynthetic } from './models.js';

export function tinyContext(): { readonly model: LlamaModel; readonly ctx: LlamaContext } {
  const held: { model?: LlamaModel; ctx?: LlamaContext } = {};
  beforeAll(async () => {
    held.model = await loadModel(await tinySynthetic());
    held.ctx = await held.model.createContext({ contextSize: 256, sequences: 1 });
  });
  afterAll(async () => {
    await held.ctx?.dispose();
    await held.model?.dispose();
  });
  return {
    get model() {
      return held.model!;
    },
    get ctx() {
      return held.ctx!;
    },
  };
}
