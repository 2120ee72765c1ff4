// The npm package as users get it: `npm pack`, installed into an empty folder with --ignore-scripts (so no
// compiler step can run), then used from ES modules and CommonJS; its shape checked with publint and
// arethetypeswrong.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from 'llama-addon';
import { hasShared, repoRoot, shared } from './helpers/models.js';

const target = `${process.platform}-${process.arch}`;
const prebuilt = join(repoRoot, 'prebuilds', target);
const ready = existsSync(prebuilt) && hasShared;

const npm = (args: string[], cwd: string) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
// The installed package must find its own binary: nothing may point it elsewhere.
const { LLAMA_ADDON_BINARY: _ignored, ...cleanEnv } = process.env;
const addonFile = `llama-addon.${['napi', process.platform === 'linux' ? 'glibc' : null].filter(Boolean).join('.')}.node`;

if (!ready && process.env.CI) {
  describe('the npm package', () => {
    it('needs prebuilt binaries and ../shared/models', () => {
      throw new Error(`CI is set but ${existsSync(prebuilt) ? '../shared/models is' : `${prebuilt} is`} missing: .ci/run makes the portable build and runs \`npm run prebuild\``);
    });
  });
} else if (!ready) {
  console.warn(`[llama-addon tests] skipping the package tests: ${prebuilt} is missing (run \`npm run prebuild -- --build\`)`);
}

(ready ? describe : describe.skip)('the npm package', () => {
  const work = join(tmpdir(), `llama-addon-pack-${process.pid}`);
  const app = join(work, 'app');
  let tarball = '';
  let files: Array<{ path: string; size: number }> = [];
  let expected = '';

  beforeAll(async () => {
    rmSync(work, { recursive: true, force: true });
    mkdirSync(app, { recursive: true });
    const packed = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], repoRoot)) as Array<{ filename: string; files: Array<{ path: string; size: number }> }>;
    tarball = join(work, packed[0].filename);
    files = packed[0].files;
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, version: '1.0.0' }));
    npm(['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', tarball], app);
    const model = await loadModel(shared('stories260k.gguf'));
    const ctx = await model.createContext({ contextSize: 256 });
    expected = (await ctx.createSession().complete('Once upon a time', { maxTokens: 16, temperature: 0 })).text;
    await model.dispose();
  }, 600_000);

  it('holds the prebuilt addon, its libraries and every CPU variant, and no build folder', () => {
    const paths = files.map((f) => f.path);
    expect(paths).toContain(`prebuilds/${target}/${addonFile}`);
    for (const lib of ['libllama-addon-llama', 'libllama-addon-ggml-base', 'libllama-addon-llama-common', 'libggml-rpc']) {
      expect(paths.some((p) => p.startsWith(`prebuilds/${target}/${lib}.`))).toBe(true);
    }
    // Every CPU variant of the architecture (x86-64 here: baseline, AVX2, AVX-512 among them).
    if (process.arch === 'x64') for (const v of ['x64', 'haswell', 'skylakex']) expect(paths).toContain(`prebuilds/${target}/libggml-cpu-${v}.so`);
    expect(paths.some((p) => p.startsWith('build/'))).toBe(false);
    expect(paths).toContain('dist/index.js');
    expect(paths).toContain('dist/cjs/index.js');
    const installed = join(app, 'node_modules', 'llama-addon');
    expect(existsSync(join(installed, 'build'))).toBe(false);
  });

  it('ships no TypeScript sources, tests or device scripts, and installs no build toolchain', () => {
    const paths = files.map((f) => f.path);
    expect(paths.filter((p) => p.startsWith('lib/') || p.startsWith('test/') || p.startsWith('fuzz/') || p.startsWith('bench/'))).toEqual([]);
    expect(paths.filter((p) => /gpu-run|device-bundle/.test(p))).toEqual([]);
    // What a source build needs stays (it installs its toolchain when it runs: scripts/build.mjs).
    for (const p of ['CMakeLists.txt', 'scripts/build.mjs', 'scripts/llama-source.mjs', 'scripts/llama-pin.json', 'native/addon.cpp']) expect(paths).toContain(p);
    // Source maps carry their sources, so stack traces and debuggers still show the TypeScript.
    const map = JSON.parse(execFileSync('tar', ['-xzOf', tarball, 'package/dist/index.js.map'], { encoding: 'utf8' })) as { sourcesContent?: string[] };
    expect(map.sourcesContent?.[0]).toContain('export');
    for (const name of ['cmake-js', 'node-addon-api', 'node-api-headers', 'node-llama-cpp']) {
      expect(existsSync(join(app, 'node_modules', name)), name).toBe(false);
    }
  });

  it("has an install script that, for users who run scripts, sees the prebuilt binary and builds nothing", () => {
    const installed = join(app, 'node_modules', 'llama-addon');
    const { LLAMA_ADDON_REBUILD: _rebuild, ...env } = cleanEnv;
    const r = spawnSync(process.execPath, [join(installed, 'scripts', 'build.mjs'), '--if-needed'], { cwd: installed, encoding: 'utf8', env });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('using the prebuilt binaries');
    expect(existsSync(join(installed, 'build'))).toBe(false);
  });

  const script = (kind: 'esm' | 'cjs') => {
    const body = `
      const model = await loadModel(${JSON.stringify(shared('stories260k.gguf'))});
      const ctx = await model.createContext({ contextSize: 256 });
      const r = await ctx.createSession().complete('Once upon a time', { maxTokens: 16, temperature: 0 });
      process.stdout.write(JSON.stringify({ text: r.text, error: typeof LlamaError }));
      await model.dispose();`;
    return kind === 'esm'
      ? `import { loadModel, LlamaError } from 'llama-addon';\n${body}`
      : `const { loadModel, LlamaError } = require('llama-addon');\n(async () => {${body}})();`;
  };

  for (const kind of ['esm', 'cjs'] as const) {
    it(`generates text from ${kind === 'esm' ? 'import' : 'require'} without any build step`, () => {
      const args = kind === 'esm' ? ['--input-type=module', '-e', script(kind)] : ['-e', script(kind)];
      const r = spawnSync(process.execPath, args, { cwd: app, encoding: 'utf8', env: cleanEnv, timeout: 120_000 });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { text: string; error: string };
      expect(out.text).toBe(expected);
      expect(out.error).toBe('function');
    });
  }

  it('loads the prebuilt binary, and says what it looked for when there is none', () => {
    const installed = join(app, 'node_modules', 'llama-addon');
    // Which JS entry and which native file a user's process loads.
    const which = spawnSync(
      process.execPath,
      ['-e', "require('llama-addon').getBackendInfo(); const so = require('fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').find((l) => l.endsWith('.node')); process.stdout.write(JSON.stringify({ js: require.resolve('llama-addon'), so: so ? so.split(/\\s+/).pop() : null }))"],
      { cwd: app, encoding: 'utf8', env: cleanEnv },
    );
    expect(which.status, which.stderr).toBe(0);
    const loaded = JSON.parse(which.stdout) as { js: string; so: string | null };
    expect(loaded.js).toBe(join(installed, 'dist', 'cjs', 'index.js'));
    if (process.platform === 'linux') expect(loaded.so).toBe(join(installed, 'prebuilds', target, addonFile));
    // Without a binary for this platform: one error naming every place tried and the command that fixes it.
    const moved = join(work, 'moved-prebuilds');
    execFileSync('mv', [join(installed, 'prebuilds'), moved]);
    try {
      const r = spawnSync(process.execPath, ['-e', "try { require('llama-addon').getSystemInfo() } catch (e) { process.stdout.write(JSON.stringify({ code: e.code, message: e.message })) }"], { cwd: app, encoding: 'utf8', env: cleanEnv });
      const e = JSON.parse(r.stdout) as { code: string; message: string };
      expect(e.code).toBe('ERR_NATIVE_LOAD');
      expect(e.message).toContain(join(installed, 'build', 'Release', 'llama_addon.node'));
      expect(e.message).toContain(join(installed, 'prebuilds', target, addonFile));
      expect(e.message).toContain('no prebuilds/ folder');
      expect(e.message).toContain('npm rebuild llama-addon');
    } finally {
      execFileSync('mv', [moved, join(installed, 'prebuilds')]);
    }
  });

  it('passes publint and arethetypeswrong (ESM and CommonJS entry points, with types for both)', () => {
    const bin = (name: string) => join(repoRoot, 'node_modules', '.bin', name);
    const publint = spawnSync(bin('publint'), [join(app, 'node_modules', 'llama-addon')], { encoding: 'utf8' });
    expect(publint.status, publint.stdout + publint.stderr).toBe(0);
    expect(publint.stdout).not.toMatch(/Errors:/);
    const attw = spawnSync(bin('attw'), [tarball, '--format', 'json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    const report = JSON.parse(attw.stdout) as { analysis: { problems: unknown[] } };
    expect(report.analysis.problems, attw.stdout.slice(0, 2000)).toEqual([]);
  });
});
