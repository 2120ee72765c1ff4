#!/usr/bin/env node
// Extracts the pinned llama.cpp source from the git bundle shipped inside the pinned
// node-llama-cpp npm package into deps/llama.cpp, and verifies its commit id.
// Then applies our patches (patches/llama.cpp/*.patch, each with a comment saying why) and records them in
// deps/llama.cpp/.llama-addon-patches, so that a changed patch set re-extracts the source.
// With LLAMA_CPP_DIR set, checks that directory instead, extracts nothing and patches nothing (it warns).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, rmSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const pin = JSON.parse(readFileSync(join(root, 'scripts', 'llama-pin.json'), 'utf8'));
export const PINNED_COMMIT = pin.commit;
export const PINNED_RELEASE = pin.release;
export const PINNED_PACKAGE = pin.package;

function git(args, cwd) {
  return execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

function headOf(dir) {
  try {
    return git(['rev-parse', 'HEAD'], dir);
  } catch {
    return null;
  }
}

const PATCH_DIR = join(root, 'patches', 'llama.cpp');
const PATCH_MARK = '.llama-addon-patches';

/** Our patches to the pinned source, in order, and one digest of them all. */
export function llamaPatches() {
  const files = existsSync(PATCH_DIR) ? readdirSync(PATCH_DIR).filter((f) => f.endsWith('.patch')).sort() : [];
  const hash = createHash('sha256');
  for (const f of files) hash.update(f).update('\0').update(readFileSync(join(PATCH_DIR, f))).update('\0');
  return { files: files.map((f) => join(PATCH_DIR, f)), digest: hash.digest('hex') };
}

function patchedWith(dir) {
  try {
    return readFileSync(join(dir, PATCH_MARK), 'utf8').trim();
  } catch {
    return null;
  }
}

/** Locates the git bundle inside the installed, pinned node-llama-cpp package. */
export function findBundle() {
  // node-llama-cpp does not export its package.json: look for the package folder the way Node does.
  let pkgJson;
  for (let dir = root; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', 'node-llama-cpp', 'package.json');
    if (existsSync(candidate)) {
      pkgJson = candidate;
      break;
    }
    if (dirname(dir) === dir) break;
  }
  if (!pkgJson) {
    throw new Error(
      `llama.cpp source: the package ${PINNED_PACKAGE} is not installed, and it carries the pinned llama.cpp source.\n` +
        `Run \`npm install\` in ${root}, or set LLAMA_CPP_DIR to a llama.cpp checkout.`,
    );
  }
  const pkgDir = dirname(pkgJson);
  const version = JSON.parse(readFileSync(pkgJson, 'utf8')).version;
  const expected = PINNED_PACKAGE.split('@').pop();
  if (version !== expected) {
    throw new Error(`llama.cpp source: expected node-llama-cpp ${expected}, found ${version} in ${pkgDir}. Run \`npm ci\`.`);
  }
  const bundle = join(pkgDir, 'llama', 'gitRelease.bundle');
  if (!existsSync(bundle)) throw new Error(`llama.cpp source: ${bundle} is missing from ${PINNED_PACKAGE}`);
  return bundle;
}

/** Returns the llama.cpp source directory to build against, extracting the pinned source when needed. */
export function ensureLlamaSource({ quiet = false } = {}) {
  const log = quiet ? () => {} : (m) => console.error(`[llama-addon] ${m}`);
  if (process.env.LLAMA_CPP_DIR) {
    const dir = resolve(process.env.LLAMA_CPP_DIR);
    if (!existsSync(join(dir, 'include', 'llama.h'))) {
      throw new Error(`LLAMA_CPP_DIR=${dir} does not look like a llama.cpp checkout (include/llama.h is missing)`);
    }
    const head = headOf(dir);
    if (head !== PINNED_COMMIT) {
      log(`warning: LLAMA_CPP_DIR is at ${head ?? 'an unknown commit'}, not the pinned ${PINNED_COMMIT}; the build may fail`);
    }
    const { files, digest } = llamaPatches();
    if (files.length > 0 && patchedWith(dir) !== digest) {
      log(`warning: LLAMA_CPP_DIR is not patched; apply ${files.map((f) => f.slice(root.length + 1)).join(', ')} to it (git apply) for the fixes they carry`);
    }
    return dir;
  }
  const dir = join(root, 'deps', 'llama.cpp');
  const patches = llamaPatches();
  if (existsSync(join(dir, 'include', 'llama.h')) && headOf(dir) === PINNED_COMMIT && patchedWith(dir) === patches.digest) return dir;

  const bundle = findBundle();
  log(`extracting llama.cpp ${PINNED_RELEASE} (${PINNED_COMMIT.slice(0, 12)}) from ${bundle}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dirname(dir), { recursive: true });
  try {
    git(['clone', '--quiet', '--no-checkout', bundle, dir]);
    git(['-c', 'advice.detachedHead=false', 'checkout', '--quiet', PINNED_COMMIT], dir);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`llama.cpp source: extracting ${bundle} with git failed (is git installed?): ${e.stderr || e.message}`);
  }
  const head = headOf(dir);
  if (head !== PINNED_COMMIT) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`llama.cpp source: the bundle gave commit ${head}, expected ${PINNED_COMMIT}`);
  }
  for (const file of patches.files) {
    try {
      git(['apply', '--whitespace=nowarn', file], dir);
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`llama.cpp source: the patch ${file} does not apply to ${PINNED_COMMIT}: ${e.stderr || e.message}`);
    }
  }
  writeFileSync(join(dir, PATCH_MARK), patches.digest + '\n');
  log(`llama.cpp source ready at ${dir} (commit verified, ${patches.files.length} patch${patches.files.length === 1 ? '' : 'es'} applied)`);
  return dir;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    console.log(ensureLlamaSource());
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}
