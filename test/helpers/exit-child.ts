// Run by test/exit.test.ts in a child process: each mode leaves the process in a state it must exit from
// cleanly (exit code and output are checked by the parent).
import { loadModel, setLogLevel } from '../../lib/index.js';

setLogLevel('error');
const [modelPath, mode] = process.argv.slice(2);
const model = await loadModel(modelPath);
const ctx = await model.createContext({ contextSize: 2048 });
const session = ctx.createSession();
const endless = { maxTokens: 100_000, temperature: 0.8, seed: 1, logitBias: { [model.vocab.eos!]: -Infinity } } as const;

switch (mode) {
  case 'unconsumed': {
    // Nobody reads this generation: once its queue is full it waits, and must not keep the process alive.
    session.generate('Once upon a time', endless);
    break;
  }
  case 'abort-paused': {
    const gen = session.generate('Once upon a time', endless);
    setTimeout(() => {
      gen.abort();
      gen.result.then((r) => console.log(`settled ${r.stopReason}`));
    }, 200);
    break;
  }
  case 'process-exit': {
    const gen = session.generate('Once upon a time', endless);
    let n = 0;
    for await (const _ of gen) {
      if (++n === 20) process.exit(7);
    }
    break;
  }
  case 'acquire-wait': {
    // acquireSession waits for a session to go; the only thing that ends the wait is an unref'd timer, so
    // the wait itself must keep the process alive (it ended with code 13, "unsettled top-level await").
    const one = await model.createContext({ contextSize: 256, sequences: 1 });
    const held = one.createSession();
    setTimeout(() => held.dispose(), 300).unref();
    const got = await one.acquireSession();
    console.log(`acquired ${got.disposed ? 'disposed' : 'a session'}`);
    got.dispose();
    break;
  }
  case 'undisposed-running': {
    const gen = session.generate('Once upon a time', { ...endless, maxTokens: 300 });
    gen.result.then((r) => console.log(`done ${r.usage.completionTokens}`));
    break;
  }
}
console.log(`end of script ${mode}`);
