// GPU backends: finding their modules, probing each in a child process before this process loads it, and
// choosing the devices a model uses (`loadModel(path, { gpu })`).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import { LlamaError } from '../base/errors.js';
import { loadedAddonFile, native, unpackedPath, type BackendDevice, type BackendInfo, type GpuBackendName, type GpuModuleInfo } from './native.js';

/** Which GPU backend a model uses: `'auto'` (what loads here, else the CPU), one by name, or `false` (CPU only). */
export type GpuOption = 'auto' | GpuBackendName | false;

/** The GPU backends in the order `'auto'` tries them on this platform. */
export const gpuBackendOrder: readonly GpuBackendName[] = process.platform === 'darwin' ? ['metal', 'vulkan'] : ['cuda', 'vulkan'];

// ggml names backend modules libggml-<name>.so everywhere but Windows (ggml-backend-reg.cpp).
const moduleFile = (backend: GpuBackendName) => (process.platform === 'win32' ? `ggml-${backend}.dll` : `libggml-${backend}.so`);

/** Where the module of `backend` may be, in order. */
export function gpuModuleCandidates(backend: GpuBackendName): string[] {
  native(); // the addon's folder is the first place to look, and the probe needs the addon
  const list: string[] = [];
  for (const entry of (process.env.LLAMA_ADDON_GPU_MODULES ?? '').split(delimiter).filter(Boolean)) {
    list.push(isDir(entry) ? join(entry, moduleFile(backend)) : entry);
  }
  const addon = loadedAddonFile();
  if (addon) list.push(join(dirname(addon), 'gpu', moduleFile(backend)));
  // One optional npm package per platform and backend, holding the module (and what it needs) at its root.
  const pkg = `@llama-addon/${process.platform}-${process.arch}-${backend}`;
  try {
    const req = createRequire(import.meta.url);
    list.push(join(dirname(req.resolve(`${pkg}/package.json`)), moduleFile(backend)));
  } catch {
    // not installed
  }
  // In an Electron app, native files are loaded from app.asar.unpacked (see asarUnpack in the README).
  return list.map(unpackedPath).filter((p, i, all) => all.indexOf(p) === i);
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The module file of `backend` that exists, if any (LLAMA_ADDON_GPU_MODULES may also name a file directly). */
function findModule(backend: GpuBackendName): string | undefined {
  for (const p of gpuModuleCandidates(backend)) {
    const name = p.split(/[\\/]/).pop() ?? '';
    if (existsSync(p) && name.includes(`ggml-${backend}`)) return p;
  }
  return undefined;
}

interface ProbeResult {
  ok: boolean;
  error?: string;
  devices?: BackendDevice[];
}

// Run by the child: loads the addon and the module, lists the module's devices (which asks the driver for
// their memory), and prints JSON. A driver that crashes takes only the child down.
const probeSource = `
const addon = require(process.argv[1]);
addon.initBackends(require('path').dirname(process.argv[1]));
const r = addon.loadBackend(process.argv[2]);
if (r.error) { process.stdout.write(JSON.stringify({ ok: false, error: r.error })); process.exit(0); }
const devices = addon.backendInfo().devices.filter((d) => d.backend === r.backend);
process.stdout.write(JSON.stringify(devices.length ? { ok: true, devices } : { ok: false, error: 'the module loaded but found no devices' }));
process.exit(0);
`;

const probeTimeoutMs = 60_000;

function probeArgs(module: string): [string, string[], { env: NodeJS.ProcessEnv; timeout: number }] {
  const addon = loadedAddonFile();
  if (!addon) throw new Error('the addon is not loaded');
  // ELECTRON_RUN_AS_NODE: in Electron, process.execPath is the app; this makes it run the probe as Node.
  return [process.execPath, ['-e', probeSource, addon, module], { env: { ...process.env, ELECTRON_RUN_AS_NODE: '1' }, timeout: probeTimeoutMs }];
}

function readProbe(status: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string): ProbeResult {
  // An answer counts even if the child crashed afterwards, in exit-time destructors (a known driver fault
  // that does not affect use).
  try {
    const r = JSON.parse(stdout) as ProbeResult;
    if (typeof r.ok === 'boolean') return r;
  } catch {
    // not JSON: the probe died before it could answer
  }
  if (signal) return { ok: false, error: `the probe process was killed by ${signal}${stderr ? `: ${lastLines(stderr)}` : ''}` };
  return { ok: false, error: `the probe process exited with code ${status}${stderr ? `: ${lastLines(stderr)}` : ''}` };
}

const lastLines = (s: string) => s.trim().split('\n').slice(-3).join(' | ');

interface ModuleState {
  path: string;
  state: 'loaded' | 'failed';
  error?: string;
  backendName?: string;
}

const states = new Map<GpuBackendName, ModuleState>();
const pending = new Map<GpuBackendName, Promise<ModuleState>>();

/** Loads `module` into this process after a successful probe, and records the outcome. */
function finish(backend: GpuBackendName, path: string, probe: ProbeResult): ModuleState {
  let s: ModuleState;
  if (!probe.ok) {
    s = { path, state: 'failed', error: probe.error };
  } else {
    const r = native().loadBackend(path);
    s = r.backend ? { path, state: 'loaded', backendName: r.backend } : { path, state: 'failed', error: r.error };
  }
  states.set(backend, s);
  return s;
}

/** Probes and loads the module of `backend` (once per process); undefined when no module is installed. */
async function ensureModule(backend: GpuBackendName): Promise<ModuleState | undefined> {
  const done = states.get(backend);
  if (done) return done;
  const path = findModule(backend);
  if (!path) return undefined;
  let p = pending.get(backend);
  if (!p) {
    p = new Promise<ProbeResult>((resolve) => {
      let cmd: string;
      let args: string[];
      let opts: { env: NodeJS.ProcessEnv; timeout: number };
      try {
        [cmd, args, opts] = probeArgs(path);
      } catch (e) {
        resolve({ ok: false, error: `the probe could not be prepared: ${(e as Error).message}` });
        return;
      }
      const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', (e) => resolve({ ok: false, error: `the probe process could not start: ${e.message}` }));
      child.on('close', (code, signal) => resolve(readProbe(code, signal, out, err)));
    }).then((probe) => states.get(backend) ?? finish(backend, path, probe));
    pending.set(backend, p);
  }
  return p;
}

/** Synchronous {@link ensureModule}, for {@link getBackendInfo}: blocks while the child probes (once). */
function ensureModuleSync(backend: GpuBackendName): ModuleState | undefined {
  const done = states.get(backend);
  if (done) return done;
  const path = findModule(backend);
  if (!path) return undefined;
  const [cmd, args, opts] = probeArgs(path);
  const r = spawnSync(cmd, args, { ...opts, encoding: 'utf8' });
  const probe = r.error ? { ok: false, error: `the probe process could not start: ${r.error.message}` } : readProbe(r.status, r.signal, r.stdout, r.stderr);
  return states.get(backend) ?? finish(backend, path, probe);
}

const displayName: Record<GpuBackendName, string> = { cuda: 'CUDA', vulkan: 'Vulkan', metal: 'Metal' };

/**
 * The backend's devices a model should use: its discrete GPUs, or its integrated ones where it has no
 * discrete one (as llama.cpp chooses by default: an integrated GPU next to a discrete one only slows it).
 */
function devicesOf(s: ModuleState): BackendDevice[] {
  const mine = native()
    .backendInfo()
    .devices.filter((d) => d.backend === s.backendName);
  const discrete = mine.filter((d) => d.type === 'gpu');
  return discrete.length ? discrete : mine.filter((d) => d.type === 'igpu');
}

/** The devices a model loads onto, and why a GPU backend was not used (for the fallback warning). */
export interface DeviceChoice {
  devices: BackendDevice[];
  backend?: GpuBackendName;
}

/**
 * Picks the devices for `gpu`. `'auto'` takes the first GPU backend that loads and falls back to the CPU with
 * a process warning (code `LLAMA_ADDON_GPU_FALLBACK`) when an installed one fails; a named backend that is
 * missing or fails is `ERR_BACKEND_UNAVAILABLE`.
 */
export async function chooseDevices(gpu: GpuOption, caller: (...args: never[]) => unknown): Promise<DeviceChoice> {
  if (gpu === false) return { devices: [] };
  if (gpu !== 'auto') {
    const s = await ensureModule(gpu);
    if (!s) {
      throw new LlamaError(
        'ERR_BACKEND_UNAVAILABLE',
        `Expected the ${displayName[gpu]} backend module (${moduleFile(gpu)}), but it is not installed. Looked in:\n  ` +
          `${gpuModuleCandidates(gpu).join('\n  ') || '(nowhere: the addon is not loaded)'}\n` +
          `Install @llama-addon/${process.platform}-${process.arch}-${gpu}, or build with \`npm run build -- --gpu ${gpu}\`.`,
      );
    }
    if (s.state === 'failed') {
      const e = new LlamaError('ERR_BACKEND_UNAVAILABLE', `The ${displayName[gpu]} backend (${s.path}) cannot be used here: ${s.error}`);
      Error.captureStackTrace?.(e, caller);
      throw e;
    }
    return { devices: devicesOf(s), backend: gpu };
  }
  for (const backend of gpuBackendOrder) {
    const s = await ensureModule(backend);
    if (!s) continue;
    if (s.state === 'loaded') return { devices: devicesOf(s), backend };
    warnFallback(backend, s);
  }
  return { devices: [] };
}

const warned = new Set<GpuBackendName>();
function warnFallback(backend: GpuBackendName, s: ModuleState): void {
  if (warned.has(backend)) return;
  warned.add(backend);
  process.emitWarning(`llama-addon: the ${displayName[backend]} backend (${s.path}) could not be used, so models run on the CPU: ${s.error}`, {
    code: 'LLAMA_ADDON_GPU_FALLBACK',
  });
}

/**
 * The backends loaded and usable here and their devices, after probing any installed GPU module not tried
 * yet (in a child process, once; this call blocks while it runs).
 */
export function backendInfo(): BackendInfo {
  const addon = native();
  for (const backend of gpuBackendOrder) ensureModuleSync(backend);
  const gpuModules: GpuModuleInfo[] = [];
  for (const backend of ['cuda', 'vulkan', 'metal'] as const) {
    const s = states.get(backend);
    if (s) gpuModules.push({ backend, path: s.path, state: s.state, ...(s.error ? { error: s.error } : {}) });
    else {
      const path = findModule(backend);
      if (path) gpuModules.push({ backend, path, state: 'found' });
    }
  }
  return { ...addon.backendInfo(), gpuModules };
}
