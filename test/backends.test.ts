import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { estimateMemory, getBackendInfo, getSystemInfo, loadModel, setLogger, setLogLevel } from 'llama-addon';
import { rejectsWith } from './helpers/errors.js';
import { describeShared, fixtures, repoRoot, shared } from './helpers/models.js';

const cpuFlags = existsSync('/proc/cpuinfo') ? new Set((/^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').trim().split(/\s+/)) : null;

describe('backends', () => {
  it('loads the CPU variant that uses what this CPU has (AVX2, AVX-512), and the RPC backend', () => {
    const info = getBackendInfo();
    expect(info.backends).toContain('CPU');
    expect(info.backends).toContain('RPC');
    const cpu = info.devices.find((d) => d.type === 'cpu');
    expect(cpu?.memoryTotal).toBeGreaterThan(0);
    if (!cpuFlags) return;
    // The features the picked variant was compiled for (ggml reports them) follow the CPU's own flags.
    const has = (f: string) => info.cpuFeatures[f] === '1';
    expect(has('AVX2')).toBe(cpuFlags.has('avx2'));
    if (cpuFlags.has('avx512f') && cpuFlags.has('avx512bw')) expect(has('AVX512')).toBe(true);
    if (!cpuFlags.has('avx2')) expect(has('AVX512')).toBe(false);
  });

  it('says no GPU offload where no GPU backend loads, though the RPC backend is there', () => {
    const info = getBackendInfo();
    if (info.gpuModules.some((m) => m.state === 'loaded')) return; // the GPU machine: see gpu.test.ts
    expect(info.backends).toContain('RPC'); // llama.cpp's own answer would count it as offload
    expect(getSystemInfo().gpuOffload).toBe(false);
  });

  it('rejects unknown gpu options with one wording', async () => {
    const e = await rejectsWith(loadModel('x.gguf', { gpu: 'opencl' as never }), 'ERR_INVALID_ARGUMENT');
    expect(e.message).toMatch(/gpu.*"auto", "cuda", "vulkan", "metal" or false.*opencl/);
    await rejectsWith(loadModel('x.gguf', { rpcServers: ['nohost'] }), 'ERR_INVALID_ARGUMENT');
  });
});

describeShared('GPU backends on a machine without them', () => {
  it('gives ERR_BACKEND_UNAVAILABLE for a GPU backend that is not installed, naming where it looked', async () => {
    const info = getBackendInfo();
    for (const backend of ['cuda', 'vulkan', 'metal'] as const) {
      if (info.gpuModules.some((m) => m.backend === backend)) continue;
      const e = await rejectsWith(loadModel(shared('stories260k.gguf'), { gpu: backend }), 'ERR_BACKEND_UNAVAILABLE');
      expect(e.message).toContain(`libggml-${backend}.so`);
      expect(e.message).toContain(`--gpu ${backend}`);
    }
  });

  it('runs on the CPU with gpu: false, and with gpu: "auto" when no GPU module is installed', async () => {
    const off = await loadModel(shared('stories260k.gguf'), { gpu: false, gpuLayers: 'max' });
    expect(off.placement).toEqual({ gpu: null, devices: [], gpuLayers: 0 });
    await off.dispose();
    if (getBackendInfo().gpuModules.length === 0) {
      const auto = await loadModel(shared('stories260k.gguf'));
      expect(auto.placement.gpu).toBeNull();
      await auto.dispose();
    }
  });

  it('probes GPU modules in a child process: a crashing or broken module cannot take the app down', () => {
    // Two broken modules: one that is not a library at all, one whose loading crashes (SIGSEGV).
    const dir = join(fixtures, 'broken-gpu');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'libggml-cuda.so'), 'not a shared library');
    const src = join(dir, 'crash.c');
    writeFileSync(src, '#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n');
    const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', join(dir, 'libggml-vulkan.so'), src], { encoding: 'utf8' });
    expect(cc.status, cc.stderr).toBe(0);

    const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'gpu-fallback-child.ts'), shared('stories260k.gguf')], {
      encoding: 'utf8',
      env: { ...process.env, LLAMA_ADDON_GPU_MODULES: dir },
      timeout: 120_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      autoPlacement: { gpu: string | null; gpuLayers: number };
      autoText: string;
      vulkan: { code: string; message: string };
      cuda: { code: string; message: string };
      modules: Array<{ backend: string; state: string; error?: string }>;
      warnings: Array<{ code?: string; message: string }>;
    };
    // 'auto' fell back to the CPU, warned once per failed backend, and the model works.
    expect(out.autoPlacement).toMatchObject({ gpu: null, gpuLayers: 0 });
    expect(out.autoText.length).toBeGreaterThan(10);
    const fallbacks = out.warnings.filter((w) => w.code === 'LLAMA_ADDON_GPU_FALLBACK');
    expect(fallbacks.map((w) => /the (\w+) backend/.exec(w.message)?.[1]).sort()).toEqual(['CUDA', 'Vulkan']);
    // Asking for them by name fails with the reason.
    expect(out.vulkan.code).toBe('ERR_BACKEND_UNAVAILABLE');
    expect(out.vulkan.message).toMatch(/SIGSEGV/);
    expect(out.cuda.code).toBe('ERR_BACKEND_UNAVAILABLE');
    // dlopen's own reason for a file that is not a library
    expect(out.cuda.message).toMatch(/libggml-cuda\.so.*(invalid ELF header|file too short)/);
    expect(out.modules.map((m) => [m.backend, m.state]).sort()).toEqual([
      ['cuda', 'failed'],
      ['vulkan', 'failed'],
    ]);

    // estimateMemory as a process's first call probes the same way, and leaves loadModel working.
    const first = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'test', 'helpers', 'estimate-first-child.ts'), shared('stories260k.gguf')], {
      encoding: 'utf8',
      env: { ...process.env, LLAMA_ADDON_GPU_MODULES: dir },
      timeout: 120_000,
    });
    expect(first.status, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toEqual({ gpuLayers: 0, deviceFree: 0, placement: { gpu: null, devices: [], gpuLayers: 0 } });
    expect(first.stderr).toContain('LLAMA_ADDON_GPU_FALLBACK');
  });
});

describeShared('estimateMemory', () => {
  it("matches llama.cpp's own sizes of the weights and the KV cache", async () => {
    const path = shared('tinystories-656k-q8_0.gguf');
    const est = await estimateMemory(path, { contextSize: 512, gpu: false });
    const lines: string[] = [];
    setLogLevel('info');
    setLogger((_level, message) => lines.push(message));
    try {
      const model = await loadModel(path, { gpu: false });
      expect(est.weights.total).toBe(model.info.sizeBytes);
      expect(est.layers).toBe(model.info.layers);
      const ctx = await model.createContext({ contextSize: 512, sequences: 1 });
      await ctx.dispose();
      await model.dispose();
    } finally {
      setLogger(null);
      setLogLevel('warn');
    }
    // llama_kv_cache: size =    0.50 MiB (   512 cells, ...)
    const kv = lines.map((l) => /llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells/.exec(l)).find(Boolean);
    expect(kv, lines.filter((l) => l.includes('kv')).join('\n')).toBeTruthy();
    expect(Number(kv![2])).toBe(est.kvCache.contextSize);
    expect(est.kvCache.total / 2 ** 20).toBeCloseTo(Number(kv![1]), 2);
    expect(est.kvCache.bytesPerToken * est.kvCache.contextSize).toBe(est.kvCache.total);
    // Without a GPU nothing is planned there.
    expect(est).toMatchObject({ gpuLayers: 0, gpu: 0, deviceFree: 0 });
    expect(est.cpu).toBeGreaterThan(est.weights.total + est.kvCache.total);
  });

  it('plans no GPU layers without a GPU even for "max", and checks its arguments', async () => {
    const path = shared('stories260k.gguf');
    const all = await estimateMemory(path, { gpuLayers: 'max', gpu: false });
    expect(all).toMatchObject({ gpuLayers: 0, gpu: 0 }); // nothing can be offloaded to no GPU
    await rejectsWith(estimateMemory(path, { contextSize: -1 }), 'ERR_INVALID_ARGUMENT');
    await rejectsWith(estimateMemory(join(fixtures, 'missing.gguf')), 'ERR_MODEL_NOT_FOUND');
  });
});
