// Run by test/backends.test.ts: estimateMemory as the very first call of a process (nothing has loaded the
// addon yet), with a broken GPU module installed; a model must still load afterwards.
import { estimateMemory, loadModel, setLogLevel } from '../../lib/index.js';

const [modelPath] = process.argv.slice(2);
const estimate = await estimateMemory(modelPath, { gpu: 'auto' });
setLogLevel('error');
const model = await loadModel(modelPath);
process.stdout.write(JSON.stringify({ gpuLayers: estimate.gpuLayers, deviceFree: estimate.deviceFree, placement: model.placement }));
await model.dispose();
