#!/usr/bin/env node
// Builds the native addon with cmake-js against the pinned llama.cpp source.
//   node scripts/build.mjs [--portable] [--debug] [--if-needed] [--gpu cuda|vulkan|metal]
// Environment: LLAMA_CPP_DIR (own llama.cpp checkout), LLAMA_ADDON_JOBS (parallel jobs).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { ensureLlamaSource, root } from './llama-source.mjs';

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const valueOf = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

const output = join(root, 'build', 'Release', 'llama_addon.node');
if (flag('--if-needed') && existsSync(output) && !process.env.LLAMA_ADDON_REBUILD) {
  console.error(`[llama-addon] native addon already built at ${output}; set LLAMA_ADDON_REBUILD=1 to rebuild`);
  process.exit(0);
}

let llamaDir;
try {
  llamaDir = ensureLlamaSource();
} catch (e) {
  console.error(`[llama-addon] ${e.message}`);
  process.exit(1);
}

const gpu = valueOf('--gpu');
const gpuFlags = { cuda: 'GGML_CUDA', vulkan: 'GGML_VULKAN', metal: 'GGML_METAL' };
if (gpu !== undefined && !(gpu in gpuFlags)) {
  console.error(`[llama-addon] --gpu expects one of ${Object.keys(gpuFlags).join(', ')}; received ${JSON.stringify(gpu)}`);
  process.exit(1);
}

const jobs = Number(process.env.LLAMA_ADDON_JOBS) || availableParallelism();
const cmakeArgs = [
  'build',
  '--directory', root,
  '--out', join(root, 'build'),
  '--parallel', String(jobs),
  `--CDLLAMA_CPP_DIR=${llamaDir}`,
  `--CDLLAMA_ADDON_PORTABLE=${flag('--portable') ? 'ON' : 'OFF'}`,
];
if (gpu) cmakeArgs.push(`--CD${gpuFlags[gpu]}=ON`);
for (const name of Object.values(gpuFlags)) if (name !== gpuFlags[gpu]) cmakeArgs.push(`--CD${name}=OFF`);
if (flag('--debug')) cmakeArgs.push('--debug');

const cmakeJs = join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
const started = Date.now();
const r = spawnSync(process.execPath, [cmakeJs, ...cmakeArgs], { stdio: 'inherit', cwd: root });
if (r.status !== 0) {
  console.error('[llama-addon] native build failed; see the compiler output above');
  process.exit(r.status ?? 1);
}
console.error(`[llama-addon] built ${output} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
