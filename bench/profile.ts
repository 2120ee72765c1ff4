// Where the engine thread's time goes per token: greedy generation with the engine's profile on
// (LLAMA_ADDON_PROFILE=1, native/engine.h), sampling over a subset of the vocabulary (the default,
// native/candidates.h) and over the whole vocabulary (LLAMA_ADDON_SAMPLE_WHOLE_VOCAB=1, llama.cpp's way),
// each in a child process, alternating. Prints one line per run (tokens/s, then the profile line).
//
//   npx tsx bench/profile.ts [--tokens 256] [--rounds 2] [--gpu-layers max] model.gguf...
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    tokens: { type: 'string', default: '256' },
    rounds: { type: 'string', default: '2' },
    'gpu-layers': { type: 'string', default: '0' },
    child: { type: 'boolean', default: false },
  },
});

if (values.child) {
  const { loadModel, setLogLevel } = await import('../lib/index.js');
  setLogLevel('silent');
  const gl = values['gpu-layers'] === 'max' ? 'max' : Number(values['gpu-layers']);
  const model = await loadModel(positionals[0]!, { gpuLayers: gl });
  const ctx = await model.createContext({ contextSize: 1024 });
  const session = ctx.createSession();
  const eog = [model.vocab.eos, model.vocab.eot].filter((t): t is number => t !== null);
  const logitBias = Object.fromEntries(eog.map((t) => [t, -Infinity]));
  await session.complete('Once upon a time', { maxTokens: 8, temperature: 0, logitBias }); // warm-up
  const r = await session.complete(' there', { maxTokens: Number(values.tokens), temperature: 0, logitBias });
  console.log(`${r.tokens.length} tokens, ${r.timings.tokensPerSecond.toFixed(1)} tok/s`);
  await model.dispose();
} else {
  for (const path of positionals) {
    for (let round = 0; round < Number(values.rounds); round++) {
      for (const whole of [false, true]) {
        const p = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child',
          '--tokens', values.tokens!, '--gpu-layers', values['gpu-layers']!, path], {
          encoding: 'utf8',
          env: { ...process.env, LLAMA_ADDON_PROFILE: '1', ...(whole ? { LLAMA_ADDON_SAMPLE_WHOLE_VOCAB: '1' } : {}) },
        });
        const prof = /engine profile: .*/.exec(p.stderr)?.[0] ?? `(no profile; exit ${p.status}: ${p.stderr.slice(-400)})`;
        console.log(`${path.split('/').pop()} ${whole ? 'whole vocabulary' : 'subset'}: ${p.stdout.trim()}\n  ${prof}`);
      }
    }
  }
}
