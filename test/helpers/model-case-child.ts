// Run by test/hardening.test.ts in a child process: loads each model (and adapter) of a list and uses it the
// way a user would (tokenize, a context, a short greedy generation, the adapter applied). Prints one line per
// case, START before and the outcome after, so that a crash names the case it happened in.
import { loadModel, LlamaError, setLogLevel } from '../../lib/index.js';

interface Case {
  id: string;
  model: string;
  lora?: string;
}

setLogLevel('silent');
const cases = JSON.parse(process.argv[2]) as Case[];
for (const c of cases) {
  process.stdout.write(`START ${c.id}\n`);
  let outcome: string;
  try {
    const model = await loadModel(c.model);
    try {
      model.tokenize('Once upon a time, é { ~');
      const lora = c.lora ? await model.loadLora(c.lora) : null;
      const ctx = await model.createContext({ contextSize: 128 });
      const s = ctx.createSession();
      const r = await s.complete('Once upon a time', { temperature: 0, maxTokens: 4, ...(lora ? { lora: [lora] } : {}) });
      outcome = r.tokens.length >= 0 ? 'ok' : 'no-result';
      s.dispose();
      await ctx.dispose();
    } finally {
      await model.dispose();
    }
  } catch (e) {
    outcome = e instanceof LlamaError ? e.code : `unexpected ${(e as Error)?.name}: ${(e as Error)?.message}`;
  }
  process.stdout.write(`RESULT ${c.id} ${outcome}\n`);
}
