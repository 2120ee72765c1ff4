// getSystemInfo and getBackendInfo: what llama.cpp and ggml found on this machine.
import { backendInfo } from './backends.js';
import { native, type BackendInfo } from './native.js';

export type { BackendInfo, BackendDevice, GpuModuleInfo, GpuBackendName } from './native.js';

/** Facts about the llama.cpp build and this machine. */
export interface SystemInfo {
  /** llama.cpp version the addon was built from. */
  llamaCppVersion: string;
  /** CPU features ggml was built with and found (llama.cpp's system info line). */
  cpuFeatures: string;
  /** Thread count a context uses by default. */
  defaultThreads: number;
  /** Physical CPU cores. */
  physicalCores: number;
  /** Whether a GPU backend is loaded here with at least one device (see {@link getBackendInfo}). */
  gpuOffload: boolean;
}

/** Returns facts about the llama.cpp build and this machine. */
export function getSystemInfo(): SystemInfo {
  const s = native().systemInfo();
  return {
    llamaCppVersion: s.llamaCppVersion,
    cpuFeatures: s.systemInfo,
    defaultThreads: s.defaultThreads,
    physicalCores: s.physicalCores,
    // llama.cpp's own answer counts the RPC module; this one means a GPU device is loaded here.
    gpuOffload: native().backendInfo().devices.some((d) => (d.type === 'gpu' || d.type === 'igpu') && d.backend !== 'RPC'),
  };
}

/**
 * The compute backends usable here (the CPU variant picked for this CPU, RPC, and any GPU backend whose
 * module is installed and loads), their devices with names and free and total memory (the CPU counts as one
 * device), and the GPU modules found. The first call probes each installed GPU module in a child process
 * and blocks while it runs; later calls are quick.
 */
export function getBackendInfo(): BackendInfo {
  return backendInfo();
}
