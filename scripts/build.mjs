#!/usr/bin/env node
// Builds the native addon with cmake-js against the pinned llama.cpp source.
//   node scripts/build.mjs [--portable] [--debug] [--if-needed] [--gpu cuda|vulkan|metal] [--with-ts]
// --portable: as prebuilt binaries are: nothing beyond the C++ runtime (no OpenMP). Every build has every
// CPU variant of ggml, picked at run time. --if-needed: only when no build and no matching prebuilt exist.
// Environment: LLAMA_CPP_DIR (own llama.cpp checkout), LLAMA_ADDON_JOBS (parallel jobs),
// LLAMA_ADDON_PORTABLE=1 (same as --portable), LLAMA_ADDON_GPU (same as --gpu),
// LLAMA_ADDON_CUDA_ARCHITECTURES (CMAKE_CUDA_ARCHITECTURES; default: ggml's list),
// LLAMA_ADDON_CMAKE_ARGS (more -DNAME=VALUE definitions, separated by spaces).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { ensureLlamaSource, root } from './llama-source.mjs';

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const valueOf = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

const output = join(root, 'build', 'Release', 'llama_addon.node');
if (flag('--if-needed') && !process.env.LLAMA_ADDON_REBUILD) {
  if (existsSync(output)) {
    console.error(`[llama-addon] native addon already built at ${output}; set LLAMA_ADDON_REBUILD=1 to rebuild`);
    process.exit(0);
  }
  // The file the loader takes (lib/native/native.ts): prebuilds/<platform>-<arch>/llama-addon.napi[.<libc>].node
  const libc = process.platform === 'linux' ? (process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl') : null;
  const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (existsSync(join(prebuilt, `llama-addon.${['napi', libc].filter(Boolean).join('.')}.node`))) {
    console.error(`[llama-addon] using the prebuilt binaries in ${prebuilt}; set LLAMA_ADDON_REBUILD=1 to build from source`);
    process.exit(0);
  }
}
const portable = flag('--portable') || process.env.LLAMA_ADDON_PORTABLE === '1';

// The source-build toolchain (cmake-js, node-addon-api, node-api-headers) and the pinned llama.cpp source
// (inside node-llama-cpp) are devDependencies: users of the prebuilt binaries never install them. A source
// build from the npm package (no prebuilt binary for the platform, or LLAMA_ADDON_REBUILD=1) installs what
// is missing here first, at the versions this package.json pins, from the registry npm is set up with.
function ensureToolchain() {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const wanted = ['cmake-js', 'node-addon-api', 'node-api-headers'];
  if (!process.env.LLAMA_CPP_DIR && !existsSync(join(root, 'deps', 'llama.cpp', 'include', 'llama.h'))) wanted.push('node-llama-cpp');
  const missing = wanted.filter((name) => !existsSync(join(root, 'node_modules', name, 'package.json')) && !resolvable(name));
  if (missing.length === 0) return;
  const specs = missing.map((name) => `${name}@${pkg.devDependencies?.[name] ?? 'latest'}`);
  console.error(`[llama-addon] building from source: installing the build toolchain (${specs.join(', ')})`);
  const npmCli = process.env.npm_execpath;
  const [cmd, pre] = npmCli ? [process.execPath, [npmCli]] : [process.platform === 'win32' ? 'npm.cmd' : 'npm', []];
  const r = spawnSync(cmd, [...pre, 'install', '--no-save', '--no-package-lock', '--ignore-scripts', '--omit=optional', '--no-audit', '--no-fund', ...specs], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`[llama-addon] could not install the build toolchain (${specs.join(', ')}); install them and run \`npm rebuild llama-addon\``);
    process.exit(r.status ?? 1);
  }
}
function resolvable(name) {
  try {
    createRequire(join(root, 'package.json')).resolve(`${name}/package.json`);
    return true;
  } catch {
    return false;
  }
}
ensureToolchain();

let llamaDir;
try {
  llamaDir = ensureLlamaSource();
} catch (e) {
  console.error(`[llama-addon] ${e.message}`);
  process.exit(1);
}

const gpu = valueOf('--gpu') ?? (process.env.LLAMA_ADDON_GPU || undefined);
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
  `--CDLLAMA_ADDON_PORTABLE=${portable ? 'ON' : 'OFF'}`,
];
if (gpu === 'cuda') {
  // Without a GPU in the build machine, `native` cannot work: build for the architectures asked for, or ggml's list.
  if (process.env.LLAMA_ADDON_CUDA_ARCHITECTURES) cmakeArgs.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.LLAMA_ADDON_CUDA_ARCHITECTURES}`);
  cmakeArgs.push('--CDGGML_CUDA_NCCL=OFF');
}
if (gpu) cmakeArgs.push(`--CD${gpuFlags[gpu]}=ON`);
for (const name of Object.values(gpuFlags)) if (name !== gpuFlags[gpu]) cmakeArgs.push(`--CD${name}=OFF`);
for (const def of (process.env.LLAMA_ADDON_CMAKE_ARGS ?? '').split(/\s+/).filter(Boolean)) {
  if (!def.startsWith('-D')) {
    console.error(`[llama-addon] LLAMA_ADDON_CMAKE_ARGS takes -DNAME=VALUE definitions; received ${JSON.stringify(def)}`);
    process.exit(1);
  }
  cmakeArgs.push(`--CD${def.slice(2)}`);
}
if (flag('--debug')) cmakeArgs.push('--debug');

// cmake-js configures only a build folder without a CMake cache: a cache made with other options (a native
// build, another GPU backend) would be built as it is, whatever is asked now. Such a cache is removed so that
// the build configures again (the objects stay; only what the options change is rebuilt).
const cache = join(root, 'build', 'CMakeCache.txt');
if (existsSync(cache)) {
  const cached = readFileSync(cache, 'utf8');
  const stale = cmakeArgs
    .filter((a) => a.startsWith('--CD'))
    .map((a) => a.slice(4).split('='))
    .filter(([name, value]) => {
      const m = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:[A-Z]+=(.*)$`, 'm').exec(cached);
      return m !== null && m[1] !== value;
    });
  if (stale.length > 0) {
    console.error(`[llama-addon] the build folder was configured with other options (${stale.map(([n]) => n).join(', ')}): configuring again`);
    rmSync(cache);
  }
}

const cmakeJs = join(dirname(createRequire(join(root, 'package.json')).resolve('cmake-js/package.json')), 'bin', 'cmake-js');
const started = Date.now();
const r = spawnSync(process.execPath, [cmakeJs, ...cmakeArgs], { stdio: 'inherit', cwd: root });
if (r.status !== 0) {
  console.error('[llama-addon] native build failed; see the compiler output above');
  process.exit(r.status ?? 1);
}
// What was built, for the prebuild script and the loader's messages.
writeFileSync(
  join(root, 'build', flag('--debug') ? 'Debug' : 'Release', 'build-info.json'),
  JSON.stringify({ portable, gpu: gpu ?? null, debug: flag('--debug'), platform: process.platform, arch: process.arch, builtAt: new Date().toISOString() }, null, 2) + '\n',
);
console.error(`[llama-addon] built ${output} in ${((Date.now() - started) / 1000).toFixed(0)} s`);

// `npm run build` (--with-ts): the TypeScript too, ES modules and CommonJS.
if (flag('--with-ts')) {
  for (const [cmd, cmdArgs] of [
    [process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')]],
    [process.execPath, [join(root, 'scripts', 'build-cjs.mjs')]],
  ]) {
    const t = spawnSync(cmd, cmdArgs, { stdio: 'inherit', cwd: root });
    if (t.status !== 0) process.exit(t.status ?? 1);
  }
}
