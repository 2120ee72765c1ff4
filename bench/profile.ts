// Where the engine thread's time goes per token: greedy generation with the engine's profile on
// (LLAMA_ADDON_PROFILE=1, native/engine.h), sampling over a subset of the vocabulary (the default,
// native/candidates.h) and over the whole vocabulary (LLAMA_ADDON_SAMPLE_WHOLE_VOCAB=1, llama.cpp's way),
// each in a child process, alternating. Prints one line per run (tokens/s, then the profile line).
//
//   npx tsx bench/profile.ts [--tokens 256] [--rounds 2] [--gpu-layers max] [--threads auto,2,...] model.gguf...
// (--threads: the contexts' thread counts to compare, one run each)
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    tokens: { type: 'string', default: '256' },
    rounds: { type: 'string', default: '2' },
    'gpu-layers': { type: 'string', default: '0' },
    threads: { type: 'string', default: 'auto' },
    child: { type: 'boolean', default: false },
  },
});

if (values.child) {
  const { loadModel, setLogLevel } = await import('../lib/index.js');
  setLogLevel('silent');
  const gl = values['gpu-layers'] === 'max' ? 'max' : Number(values['gpu-layers']);
  const model = await loadModel(positionals[0]!, { gpuLayers: gl });
  const eog = [model.vocab.eos, model.vocab.eot].filter((t): t is number => t !== null);
  const logitBias = Object.fromEntries(eog.map((t) => [t, -Infinity]));
  // A warm-up in a context of its own (the process's first decode sets up the backend), whose profile
  // line comes first; the parent reads the last.
  const threads = values.threads === 'auto' ? 'auto' : Number(values.threads);
  const warm = await model.createContext({ contextSize: 1024, threads });
  await warm.createSession().complete('Once upon a time', { maxTokens: 16, temperature: 0, logitBias });
  await warm.dispose();
  const ctx = await model.createContext({ contextSize: 1024, threads });
  const session = ctx.createSession();
  await session.complete('Once upon a time', { maxTokens: 4, temperature: 0, logitBias });
  const r = await session.complete(' there', { maxTokens: Number(values.tokens), temperature: 0, logitBias });
  console.log(`${r.tokens.length} tokens, ${r.timings.tokensPerSecond.toFixed(1)} tok/s`);
  await model.dispose();
} else {
  for (const path of positionals) {
    for (let round = 0; round < Number(values.rounds); round++) {
      for (const threads of values.threads!.split(',')) {
        for (const whole of [false, true]) {
          const p = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--child',
            '--tokens', values.tokens!, '--gpu-layers', values['gpu-layers']!, '--threads', threads, path], {
            encoding: 'utf8',
            env: { ...process.env, LLAMA_ADDON_PROFILE: '1', ...(whole ? { LLAMA_ADDON_SAMPLE_WHOLE_VOCAB: '1' } : {}) },
          });
          const prof = p.stderr.match(/engine profile: .*/g)?.at(-1) ?? `(no profile; exit ${p.status}: ${p.stderr.slice(-400)})`;
          console.log(`${path.split('/').pop()} threads ${threads}, ${whole ? 'whole vocabulary' : 'subset'}: ${p.stdout.trim()}\n  ${prof}`);
        }
      }
    }
  }
}
