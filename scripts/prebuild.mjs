#!/usr/bin/env node
// Packs the portable build into prebuilt binaries, in prebuildify's folder layout:
//   prebuilds/<platform>-<arch>/llama-addon.napi[.<libc>].node   the addon
//   prebuilds/<platform>-<arch>/lib*.so                         llama.cpp's libraries and CPU/RPC modules
//   prebuilds/<platform>-<arch>/manifest.json                   files, sizes, CPU variants, glibc needed
// and each GPU module into a folder for its own optional npm package, npm/<platform>-<arch>-<backend>/.
//   node scripts/prebuild.mjs [--build]   (--build: run the portable build first; otherwise use build/Release)
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { root } from './llama-source.mjs';

// npm runs a script named "prebuild" before "build" too: as that hook it has nothing to do.
function runAsHookOfBuild() {
  try {
    const cmdline = (pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    const parentOf = (pid) => {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    };
    for (let pid = process.ppid, i = 0; pid > 1 && i < 3; pid = parentOf(pid), i++) {
      const c = cmdline(pid);
      if (/\bnpm(-cli\.js)? run(-script)? build\b/.test(c)) return true;
      if (/\bprebuild\b/.test(c) && /\bnpm\b/.test(c)) return false;
    }
  } catch {
    // not Linux: run as asked
  }
  return false;
}
if (process.env.npm_lifecycle_event === 'prebuild' && runAsHookOfBuild()) process.exit(0);

const release = join(root, 'build', 'Release');
const infoFile = join(release, 'build-info.json');
const needBuild = () => {
  if (!existsSync(infoFile)) return 'there is no build';
  const info = JSON.parse(readFileSync(infoFile, 'utf8'));
  return info.portable ? null : 'build/Release is not a portable build (it links this machine\'s OpenMP runtime), which must not be shipped';
};
if (process.argv.includes('--build') && needBuild()) {
  const r = spawnSync(process.execPath, [join(root, 'scripts', 'build.mjs'), '--portable'], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const why = needBuild();
if (why) {
  console.error(`[prebuild] ${why}: run \`npm run prebuild -- --build\` (or LLAMA_ADDON_PORTABLE=1 npm run build:native)`);
  // Where the npm hook cannot be told apart from a direct call (no /proc), this may be `npm run build`'s
  // pre-hook: it must not fail that build. Asked for directly with --build, a failure is a failure.
  process.exit(process.env.npm_lifecycle_event === 'prebuild' && process.platform !== 'linux' ? 0 : 1);
}
const info = JSON.parse(readFileSync(infoFile, 'utf8'));

const libc = () => {
  if (process.platform !== 'linux') return null;
  return process.report.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl';
};
const target = `${process.platform}-${process.arch}`;
const tags = ['napi', libc()].filter(Boolean).join('.');
const out = join(root, 'prebuilds', target);
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const isLib = (f) => /\.(so|dylib|dll)$/.test(f);
const files = [];
const copy = (from, to) => {
  copyFileSync(from, to);
  // Release builds carry symbol tables the loader does not need.
  if (process.platform === 'linux') spawnSync('strip', ['--strip-unneeded', to], { stdio: 'ignore' });
  return statSync(to).size;
};
files.push({ file: `llama-addon.${tags}.node`, bytes: copy(join(release, 'llama_addon.node'), join(out, `llama-addon.${tags}.node`)) });
for (const f of readdirSync(release).filter((f) => isLib(f) && /^(lib)?(llama-addon-|ggml-)/.test(f)).sort()) files.push({ file: f, bytes: copy(join(release, f), join(out, f)) });

// The newest glibc and libstdc++ symbol versions any file needs: the oldest runtime these binaries run on.
let glibc = null;
let glibcxx = null;
const newer = (a, b) => !a || b.some((x, i) => x !== a[i] && x > a[i] && b.slice(0, i).every((y, j) => y === a[j]));
if (libc() === 'glibc') {
  for (const { file } of files) {
    try {
      const syms = execFileSync('objdump', ['-T', join(out, file)], { encoding: 'utf8', maxBuffer: 64 << 20 });
      for (const m of syms.matchAll(/\bGLIBC_(\d+)\.(\d+)/g)) {
        const v = [Number(m[1]), Number(m[2])];
        if (newer(glibc, v)) glibc = v;
      }
      for (const m of syms.matchAll(/\bGLIBCXX_(\d+)\.(\d+)\.(\d+)/g)) {
        const v = [Number(m[1]), Number(m[2]), Number(m[3])];
        if (newer(glibcxx, v)) glibcxx = v;
      }
    } catch {
      // objdump missing: leave them unknown
    }
  }
}
// What each binary links: a build configured with OpenMP (a native build, or a portable one made from a
// cache that still had it) needs libgomp, which slim images lack: such binaries are not portable.
const needs = {};
for (const { file } of files) {
  try {
    const dyn = execFileSync('objdump', ['-p', join(out, file)], { encoding: 'utf8', maxBuffer: 64 << 20 });
    needs[file] = [...dyn.matchAll(/^\s*NEEDED\s+(\S+)/gm)].map((m) => m[1]);
  } catch {
    needs[file] = null; // objdump missing or not an ELF file
  }
}
const openmp = Object.entries(needs).filter(([, n]) => n?.some((l) => /^lib(g|i)?omp/.test(l))).map(([f]) => f);
if (openmp.length > 0) {
  console.error(`[prebuild] ${openmp.join(', ')} link OpenMP (${[...new Set(openmp.flatMap((f) => needs[f].filter((l) => /omp/.test(l))))].join(', ')}): not portable. Run \`npm run prebuild -- --build\`, which configures the build again without it.`);
  rmSync(out, { recursive: true, force: true });
  process.exit(1);
}
const cpuVariants = files.map((f) => /^libggml-cpu-?(.*)\.so$/.exec(f.file)).filter(Boolean).map((m) => m[1] || 'native');
const total = files.reduce((s, f) => s + f.bytes, 0);
const manifest = {
  target,
  libc: libc(),
  minGlibc: glibc ? glibc.join('.') : null,
  minGlibcxx: glibcxx ? glibcxx.join('.') : null,
  cpuVariants,
  openmp: false,
  needs,
  builtAt: info.builtAt,
  bytes: total,
  files,
};
writeFileSync(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log(`[prebuild] ${out}: ${files.length} files, ${(total / 2 ** 20).toFixed(1)} MiB; CPU variants: ${cpuVariants.join(', ')}; glibc >= ${manifest.minGlibc ?? '?'}, libstdc++ GLIBCXX >= ${manifest.minGlibcxx ?? '?'}`);

// GPU modules: one optional package each (installed beside llama-addon; lib/native/backends.ts finds it).
const gpuDir = join(release, 'gpu');
if (existsSync(gpuDir)) {
  const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
  for (const f of readdirSync(gpuDir).filter(isLib)) {
    const backend = /ggml-(\w+)\./.exec(f)?.[1];
    if (!backend) continue;
    const pkgDir = join(root, 'npm', `${target}-${backend}`);
    rmSync(pkgDir, { recursive: true, force: true });
    mkdirSync(pkgDir, { recursive: true });
    const bytes = copy(join(gpuDir, f), join(pkgDir, f));
    writeFileSync(
      join(pkgDir, 'package.json'),
      JSON.stringify(
        {
          name: `@llama-addon/${target}-${backend}`,
          version,
          description: `The ${backend} backend module of llama-addon for ${target}`,
          license: 'MIT',
          os: [process.platform],
          cpu: [process.arch],
          ...(libc() ? { libc: [libc()] } : {}),
          files: [f],
        },
        null,
        2,
      ) + '\n',
    );
    console.log(`[prebuild] ${pkgDir}: ${f}, ${(bytes / 2 ** 20).toFixed(1)} MiB`);
  }
}
