// Tokenize scaling sweep: every vocabulary the fuzzers use, each kind of repeated text (scripts, emoji,
// byte fallback, whitespace, digits, punctuation, combining marks, special-token text), at four sizes
// doubling from --small bytes, each timed warm (the best of two runs after one more). The median of the
// three doubling ratios must stay near 2 (linear); quadratic work gives 4 at every step. (The median, not
// a fit: one step jumps where the working set leaves the CPU's caches, about 1 MiB of text here, and
// linear growth resumes after it; phi-3, 1 MiB of spaces: 283 → 1554 ms, then 3.7, 8.3, 16.7 s.)
// Prints one row per case and exits 1 when a case grows superlinearly. Speed counts only as ratios
// measured within one run.
//
//   npx tsx fuzz/tokenize-scaling.ts [--small BYTES] [--vocab SUBSTRING]
import { loadModel, type LlamaModel } from '../lib/index.js';
import { modelPath, vocabularies } from './fixtures.js';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const small = Number(arg('--small', '262144'));
const only = arg('--vocab', '');
const steps = 4;
// Linear work doubles the time at each step; quadratic work quadruples it.
const maxRatio = 3;
// Below this the largest case is too fast to time reliably, whatever its growth.
const minMs = 150;

const units = ['😀', '日本語', 'é', 'ab', 'a b ', ' ', '\n', '\t\t', '0123456789', '{~', 'e\u0301', '\u0000', '<s>', '<|endoftext|>', 'Ünïcödé wörds, '];

function time(m: LlamaModel, text: string): number {
  const t = performance.now();
  try {
    m.tokenize(text, { special: false });
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_TOKENIZE') throw e;
  }
  return performance.now() - t;
}

function medianRatio(points: [number, number][]): number {
  const ratios = points.slice(1).map(([, t], i) => t / points[i][1]).sort((x, y) => x - y);
  return ratios[Math.floor(ratios.length / 2)];
}

let failed = 0;
for (const ref of vocabularies().filter((v) => v.includes(only))) {
  let m: LlamaModel;
  try {
    m = await loadModel(modelPath(ref), { vocabOnly: true });
  } catch (e) {
    console.log(`${ref}: not loadable (${(e as Error).message.split('\n')[0]})`);
    continue;
  }
  for (const unit of units) {
    const base = unit.repeat(Math.max(1, Math.floor(small / Buffer.byteLength(unit))));
    const points: [number, number][] = [];
    for (let k = 0; k < steps; k++) {
      const text = base.repeat(2 ** k);
      time(m, text);
      points.push([text.length, Math.max(Math.min(time(m, text), time(m, text)), 0.05)]);
    }
    const ratio = medianRatio(points);
    const last = points[points.length - 1][1];
    const bad = ratio > maxRatio && last > minMs;
    if (bad) failed++;
    console.log(`${bad ? 'SUPERLINEAR' : 'ok'}\t${ref}\t${JSON.stringify(unit)}\t${points.map(([, t]) => t.toFixed(1)).join(' → ')} ms for ×2 text: median ×${ratio.toFixed(2)}`);
  }
  await m.dispose();
}
console.log(failed === 0 ? 'tokenize scales linearly on every case' : `${failed} case(s) grew superlinearly`);
process.exit(failed === 0 ? 0 : 1);
