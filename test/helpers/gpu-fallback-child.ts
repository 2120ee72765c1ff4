// Run by test/backends.test.ts in a child process, with LLAMA_ADDON_GPU_MODULES pointing at broken GPU
// modules: a CUDA module that is not a library and a Vulkan module that crashes when loaded. This process must
// survive both, say why, and run the model on the CPU.
import { getBackendInfo, loadModel, setLogLevel, type LlamaError } from '../../lib/index.js';

setLogLevel('error');
const warnings: Array<{ code?: string; message: string }> = [];
process.on('warning', (w: Error & { code?: string }) => warnings.push({ code: w.code, message: w.message }));

const [modelPath] = process.argv.slice(2);
const out: Record<string, unknown> = {};
const auto = await loadModel(modelPath, { gpu: 'auto' });
out.autoPlacement = auto.placement;
const ctx = await auto.createContext({ contextSize: 256 });
out.autoText = (await ctx.createSession().complete('Once upon a time', { maxTokens: 12, temperature: 0 })).text;
await auto.dispose();
for (const backend of ['vulkan', 'cuda'] as const) {
  try {
    await loadModel(modelPath, { gpu: backend });
    out[backend] = 'loaded';
  } catch (e) {
    out[backend] = { code: (e as LlamaError).code, message: (e as Error).message };
  }
}
out.modules = getBackendInfo().gpuModules;
await new Promise((r) => setImmediate(r)); // let process warnings be emitted
out.warnings = warnings;
process.stdout.write(JSON.stringify(out));
