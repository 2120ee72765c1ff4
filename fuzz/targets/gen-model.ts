// The generation model (synthetic, random weights, Llama SPM vocabulary) and one context, loaded once per
// worker; each case gets a fresh session.
import { genModel } from '../fixtures.js';
import type { Env } from './common.js';
import type { LlamaContext, LlamaModel, LlamaSession } from '../../lib/index.js';

export interface Gen {
  model: LlamaModel;
  ctx: LlamaContext;
}

export function loadGen(env: Env, sequences = 1): Promise<Gen> {
  const key = `gen:${sequences}`;
  let p = env.cache.get(key) as Promise<Gen> | undefined;
  if (!p) {
    p = (async () => {
      let model = env.cache.get('gen:model') as Promise<LlamaModel> | undefined;
      if (!model) {
        model = genModel().then((path) => env.lib.loadModel(path, { gpuLayers: 0 }));
        env.cache.set('gen:model', model);
      }
      const m = await model;
      const ctx = await m.createContext({ contextSize: 512 * sequences, sequences, threads: 1 });
      return { model: m, ctx };
    })();
    env.cache.set(key, p);
  }
  return p;
}

/** A fresh session of the context (the previous case's is disposed first). */
export function freshSession(env: Env, gen: Gen): LlamaSession {
  const key = `session:${gen.ctx.sequences}`;
  (env.cache.get(key) as LlamaSession | undefined)?.dispose();
  const s = gen.ctx.createSession({ sharePrefix: false });
  env.cache.set(key, s);
  return s;
}
