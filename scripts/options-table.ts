// Prints the README's table of sampling options, generated from lib/options/sampling.ts; with --write,
// puts it in README.md between its markers. test/options.test.ts checks that the README has it as printed.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { samplingTable } from '../lib/options/sampling.js';

const START = /<!-- sampling-options:start[^>]*-->\n/;
const END = '<!-- sampling-options:end -->';

/** The README's text with the table put between its markers. */
export function withSamplingTable(readme: string): string {
  const start = START.exec(readme);
  const end = readme.indexOf(END);
  if (!start || end < start.index) throw new Error('README.md lacks the sampling-options markers');
  return readme.slice(0, start.index + start[0].length) + samplingTable() + '\n' + readme.slice(end);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const path = fileURLToPath(new URL('../README.md', import.meta.url));
  if (process.argv.includes('--write')) writeFileSync(path, withSamplingTable(readFileSync(path, 'utf8')));
  else console.log(samplingTable());
}
