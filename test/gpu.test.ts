// On a machine with a GPU backend that loads (the CUDA build on the lent GPU machine): offloading works end
// to end. Elsewhere these tests are skipped with a message; they need no ../shared override.
import { describe, expect, it } from 'vitest';
import { estimateMemory, getBackendInfo, loadModel, setLogger, setLogLevel, type GpuBackendName } from 'llama-addon';
import { hasShared, shared } from './helpers/models.js';

const info = hasShared ? getBackendInfo() : null;
const loaded = info?.gpuModules.find((m) => m.state === 'loaded');
if (!loaded) console.warn('[llama-addon tests] skipping the GPU tests: no GPU backend loads here');

(loaded ? describe : describe.skip)('GPU offload', () => {
  const backend = loaded?.backend as GpuBackendName;

  it('lists the GPU devices with their memory', () => {
    const gpus = info!.devices.filter((d) => d.type === 'gpu' || d.type === 'igpu');
    expect(gpus.length).toBeGreaterThan(0);
    for (const d of gpus) {
      expect(d.memoryTotal).toBeGreaterThan(2 ** 30);
      expect(d.memoryFree).toBeLessThanOrEqual(d.memoryTotal);
    }
  });

  it('offloads every layer by default, and generates what the CPU does at the start', async () => {
    const path = shared('tinystories-656k-q8_0.gguf');
    const prompt = 'Once upon a time';
    const cpu = await loadModel(path, { gpu: false });
    const cpuCtx = await cpu.createContext({ contextSize: 256 });
    const onCpu = await cpuCtx.createSession().complete(prompt, { maxTokens: 16, temperature: 0, logprobs: 2 });
    await cpu.dispose();
    // The comparison below means something only where the CPU's choice is clear (no near-tie to tip).
    for (const l of onCpu.logprobs!.slice(0, 2)) expect(l.top[0].logprob - l.top[1].logprob).toBeGreaterThan(0.5);

    const lines: string[] = [];
    setLogLevel('info');
    setLogger((_l, m) => lines.push(m));
    let model;
    try {
      model = await loadModel(path);
    } finally {
      setLogger(null);
      setLogLevel('warn');
    }
    expect(model.placement.gpu).toBe(backend);
    expect(model.placement.gpuLayers).toBe(model.info.layers + 1);
    expect(lines.some((l) => /offloaded \d+\/\d+ layers to GPU/.test(l)), lines.join('\n')).toBe(true);
    const ctx = await model.createContext({ contextSize: 256 });
    const onGpu = await ctx.createSession().complete(prompt, { maxTokens: 16, temperature: 0 });
    // Kernels differ in rounding; the most likely first tokens do not.
    expect(onGpu.tokens.slice(0, 2)).toEqual(onCpu.tokens.slice(0, 2));
    await model.dispose();
  });

  it('plans all layers of a small model on the GPU, and none with gpu: false', async () => {
    const path = shared('stories260k.gguf');
    const est = await estimateMemory(path, { gpu: backend });
    expect(est.deviceFree).toBeGreaterThan(0);
    expect(est.gpuLayers).toBe(est.layers + 1);
    expect(est.gpu).toBeGreaterThan(est.weights.total - est.weights.other);
    const off = await estimateMemory(path, { gpu: false });
    expect(off.gpuLayers).toBe(0);
    const some = await loadModel(path, { gpu: backend, gpuLayers: 2 });
    expect(some.placement).toMatchObject({ gpu: backend, gpuLayers: 2 });
    await some.dispose();
  });
});
