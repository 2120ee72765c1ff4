#!/usr/bin/env node
// Packs what a GPU machine without Node.js needs to build the addon with CUDA and run the test suite and the
// bench there (see `.device/gpu-run.sh`): a compressed Node binary, the pinned llama.cpp sources (with the
// vocabularies, templates and grammars the tests read), the Node-API headers, the bench bundled into plain
// .mjs files, the packages the tests need (node_modules without node-llama-cpp, TypeScript and the
// browser driver), and the tiny shared models. Output: .device/ (ignored by git; carry it, under 64 MiB).
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
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
  'tools/CMakeLists.txt', 'tools/llama-bench', 'tools/batched-bench', 'models/templates', 'grammars',
  ...['llama-spm', 'llama-bpe', 'qwen2', 'phi-3'].map((v) => `models/ggml-vocab-${v}.gguf`)];
// From the working tree, not HEAD: it carries our patches (patches/llama.cpp).
execFileSync('sh', ['-c', `tar -C "${llama}" --transform 's,^,llama.cpp/,' -cf - ${keep.map((k) => `"${k}"`).join(' ')} | xz -T0 -6 > "${join(out, 'llama-src.tar.xz')}"`], { stdio: 'inherit' });

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
for (const f of readdirSync(shared)) copyFileSync(join(shared, f), join(out, 'models', f));

// 6. the packages the test suite needs
const skip = ['@node-llama-cpp', 'node-llama-cpp', '@typescript', 'typescript', 'playwright-core', '@arethetypeswrong', 'cmake-js', '.cache'];
execFileSync('sh', ['-c', `tar -cf - ${skip.map((s) => `--exclude='node_modules/${s}'`).join(' ')} node_modules | xz -T0 -6 > "${join(out, 'node_modules.tar.xz')}"`], { cwd: root, stdio: 'inherit' });

copyFileSync(join(root, 'scripts', 'gpu-run.sh'), join(out, 'gpu-run.sh'));
writeFileSync(join(out, 'README'), 'Made by scripts/device-bundle.mjs; run `bash .device/gpu-run.sh` on the GPU machine.\n');
console.log(execFileSync('du', ['-sh', out], { encoding: 'utf8' }).trim());
