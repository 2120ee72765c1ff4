// Run by test/grammar-accept.test.ts, once with LLAMA_ADDON_GRAMMAR_REFERENCE=1 (llama.cpp's own grammar
// functions) and once without (the addon's bounded ones, native/grammar_accept.cpp): random grammars over a
// small alphabet, each matched against texts and used for a short seeded generation. Prints the outcomes as
// one JSON array; the parent compares the two runs.
import { loadModel, setLogLevel, LlamaError } from '../../lib/index.js';
import { Rng } from '../../fuzz/prng.js';

setLogLevel('error');
const [modelPath, seedArg, countArg] = process.argv.slice(2);
const model = await loadModel(modelPath);
const ctx = await model.createContext({ contextSize: 256, sequences: 1 });
const rng = new Rng(Number(seedArg));
const tokenIds = [...model.tokenize('a'), ...model.tokenize('b'), ...model.tokenize(' ab')].filter((t) => t > 2);

function element(rules: string[], index: number, depth: number): string {
  let e = rng.weighted<() => string>([
    [5, () => `"${rng.pick(['a', 'b', 'ab', 'c', 'ba', 'aa'])}"`],
    [3, () => rng.pick(['[ab]', '[^a]', '[a-c]', '[b-c ]', '.'])],
    // A reference after a literal cannot be left-recursive; a bare one to a later rule cannot either.
    [2, () => `"${rng.pick(['a', 'b'])}" ${rng.pick(rules)}`],
    [1, () => (index + 1 < rules.length ? rules[rng.int(index + 1, rules.length - 1)] : '"c"')],
    [depth < 3 ? 2 : 0, () => `(${alternatives(rules, index, depth + 1)})`],
    [1, () => `${rng.pick(['<', '!<'])}[${rng.pick(tokenIds)}]>`],
  ])();
  if (rng.chance(0.3)) e += rng.pick(['?', '*', '+', '{0,2}', '{1,3}', '{2}']);
  return e;
}

function alternatives(rules: string[], index: number, depth: number): string {
  return Array.from({ length: rng.int(1, 3) }, () => Array.from({ length: rng.int(1, 4) }, () => element(rules, index, depth)).join(' ')).join(' | ');
}

function grammar(): string {
  const kind = rng.int(0, 9);
  // Grammars whose parse states deepen with the text (a reference that is not last) and ambiguous ones.
  if (kind === 0) return `root ::= "a" root "b" | ""`;
  if (kind === 1) return `root ::= [ab] root [ab]? | "c"`;
  if (kind === 2) return `root ::= x x\nx ::= "a" x | "a" | ""`;
  const rules = ['root', ...Array.from({ length: rng.int(0, 3) }, (_, i) => `r${i + 1}`)];
  return rules.map((name, i) => `${name} ::= ${alternatives(rules, i, 0)}`).join('\n');
}

type Outcome<T> = { ok: T } | { error: string };
const outcome = async <T>(f: () => Promise<T>): Promise<Outcome<T>> => {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: e instanceof LlamaError ? `${e.code}: ${e.message}` : `uncoded: ${String(e)}` };
  }
};

const results: unknown[] = [];
for (let i = 0; i < Number(countArg); i++) {
  const g = grammar();
  if (process.env.GRAMMAR_CHILD_VERBOSE) process.stderr.write(`${i} ${JSON.stringify(g)}\n`);
  const texts = Array.from({ length: 6 }, () => Array.from({ length: rng.int(0, 10) }, () => rng.pick(['a', 'b', 'c', 'a', 'b', ' '])).join(''));
  texts.push('a'.repeat(30) + 'b'.repeat(30), 'ab'.repeat(20) + 'c');
  const session = ctx.createSession({ sharePrefix: false });
  const result = await outcome(() => session.complete('x', { grammar: g, maxTokens: 12, temperature: 1, seed: i }));
  session.dispose();
  const generated = 'ok' in result ? { ok: { text: result.ok.text, tokens: [...result.ok.tokens], stopReason: result.ok.stopReason } } : result;
  if ('ok' in generated) {
    const text = generated.ok.text;
    for (let n = 0; n < text.length; n += 3) texts.push(text.slice(0, n));
    texts.push(text);
  }
  const matches: unknown[] = [];
  for (const t of texts) matches.push(await outcome(() => model.matchesGrammar(t, g)));
  results.push({ grammar: g, generated, texts, matches });
}
process.stdout.write(JSON.stringify(results));
await ctx.dispose();
await model.dispose();
