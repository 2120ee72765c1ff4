#!/usr/bin/env node
// CommonJS build: turns tsc's ES module output (dist/*.js) into CommonJS in dist/cjs/, with a package.json
// that marks the folder as CommonJS and the same type declarations (which TypeScript then reads as
// CommonJS). import.meta.url becomes the file's own URL. esbuild does the transform: it is exact and fast.
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { transformSync } from 'esbuild';
import { root } from './llama-source.mjs';

const dist = join(root, 'dist');
const out = join(dist, 'cjs');
rmSync(out, { recursive: true, force: true });

const walk = (dir) =>
  readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (p === out) return [];
    return statSync(p).isDirectory() ? walk(p) : [p];
  });

let count = 0;
for (const file of walk(dist)) {
  const rel = relative(dist, file);
  if (rel === 'cli.js') continue; // the CLI stays an ES module
  const target = join(out, rel);
  mkdirSync(join(target, '..'), { recursive: true });
  if (file.endsWith('.d.ts')) {
    cpSync(file, target);
  } else if (file.endsWith('.js')) {
    const source = readFileSync(file, 'utf8');
    const r = transformSync(source, {
      format: 'cjs',
      platform: 'node',
      target: 'node20',
      sourcefile: rel,
      define: { 'import.meta.url': '__importMetaUrl' },
      banner: source.includes('import.meta.url') ? 'const __importMetaUrl = require("node:url").pathToFileURL(__filename).href;' : '',
      logLevel: 'error',
    });
    writeFileSync(target, r.code);
    count++;
  }
}
writeFileSync(join(out, 'package.json'), JSON.stringify({ type: 'commonjs' }, null, 2) + '\n');
console.error(`[build-cjs] ${count} modules in ${relative(root, out)}`);
