#!/usr/bin/env node
// Packs what a GPU machine without Node.js needs to build the addon with CUDA and run the bench there
// (see `.device/gpu-run.sh`): a compressed Node binary, the pinned llama.cpp sources, the Node-API headers,
// the bench bundled into plain .mjs files, and the tiny shared models. Output: .device/ (ignored by git).
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { ensureLlamaSource, root } from './llama-source.mjs';

const out = join(root, '.device');
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'bench'), { recursive: true });

// 1. the bench, bundled (no node_modules needed on the device)
for (const name of ['run', 'addon-worker']) {
  await build({
    entryPoints: [join(root, 'bench', `${name}.ts`)],
    outfile: join(out, 'bench', `${name}.mjs`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['node-llama-cpp'],
    logLevel: 'warning',
  });
}

// 2. llama.cpp sources needed for the addon and llama-bench
const llama = ensureLlamaSource({ quiet: true });
const keep = ['CMakeLists.txt', 'cmake', 'common', 'ggml', 'include', 'src', 'vendor', 'licenses', 'LICENSE',
  'tools/CMakeLists.txt', 'tools/llama-bench', 'tools/batched-bench', 'models/ggml-vocab-llama-spm.gguf'];
execFileSync('sh', ['-c', `git -C "${llama}" archive --format=tar --prefix=llama.cpp/ HEAD ${keep.map((k) => `"${k}"`).join(' ')} | xz -T0 -6 > "${join(out, 'llama-src.tar.xz')}"`], { stdio: 'inherit' });

// 3. Node-API headers
mkdirSync(join(out, 'headers'), { recursive: true });
cpSync(join(root, 'node_modules', 'node-api-headers', 'include'), join(out, 'headers', 'node-api-headers', 'include'), { recursive: true });
mkdirSync(join(out, 'headers', 'node-addon-api'), { recursive: true });
for (const f of ['napi.h', 'napi-inl.h', 'napi-inl.deprecated.h']) {
  const p = join(root, 'node_modules', 'node-addon-api', f);
  if (existsSync(p)) copyFileSync(p, join(out, 'headers', 'node-addon-api', f));
}

// 4. this machine's Node binary, compressed
execFileSync('sh', ['-c', `xz -T0 -6 -c "${process.execPath}" > "${join(out, 'node.xz')}"`], { stdio: 'inherit' });

// 5. the tiny real models
const shared = join(root, '..', 'shared', 'models');
mkdirSync(join(out, 'models'), { recursive: true });
for (const f of ['stories260k.gguf', 'tinystories-656k-q8_0.gguf']) {
  if (existsSync(join(shared, f))) copyFileSync(join(shared, f), join(out, 'models', f));
}

copyFileSync(join(root, 'scripts', 'gpu-run.sh'), join(out, 'gpu-run.sh'));
writeFileSync(join(out, 'README'), 'Made by scripts/device-bundle.mjs; run `bash .device/gpu-run.sh` on the GPU machine.\n');
console.log(execFileSync('du', ['-sh', out], { encoding: 'utf8' }).trim());
