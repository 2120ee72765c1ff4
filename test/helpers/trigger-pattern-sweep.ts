// Child of test/hardening-parsers.test.ts: checks many random trigger patterns (fragments of regular
// expression syntax, malformed ones included) and prints how each ended. The check runs on the JS thread,
// so a pattern that made its scan loop would hang this process; the test runs it with a timeout.
import { LlamaError } from '../../lib/base/errors.js';
import { parseGenerateOptions } from '../../lib/options/generate.js';
import { prng } from './prng.js';

const fragments = [
  'a', 'b', '.', '\\', '\\u', '\\u{', '}', '{', '{1', '{0,3}', '{2,1}', ',', '\\x', '\\x4', '\\x41', '\\u0041', '\\b', '\\d', '\\1', '\\c',
  '(', ')', '(?:', '(?=', '(?!', '(?<=', '[', ']', '[^', '^', '$', '|', '?', '*', '+', '0', '9', '-', '\\]', '\\[',
];
const count = Number(process.argv[2] ?? 5000);
const rand = prng(Number(process.argv[3] ?? 1));
const ends: Record<string, number> = {};
const t0 = performance.now();
for (let n = 0; n < count; n++) {
  let p = '';
  const len = 1 + Math.floor(rand() * 12);
  for (let k = 0; k < len; k++) p += fragments[Math.floor(rand() * fragments.length)];
  let end = 'ok';
  try {
    parseGenerateOptions({ grammar: 'root ::= "x"', grammarTriggers: { patterns: [p] } }, 32000, parseGenerateOptions);
  } catch (e) {
    end = e instanceof LlamaError ? e.code : `not a LlamaError: ${String(e)}`;
  }
  ends[end] = (ends[end] ?? 0) + 1;
}
console.log(JSON.stringify({ ends, ms: performance.now() - t0 }));
