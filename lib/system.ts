import { native, type BackendInfo } from './native.js';

export type { BackendInfo } from './native.js';

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
  /** Whether a GPU backend is compiled in and usable. */
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
    gpuOffload: s.supportsGpuOffload,
  };
}

/**
 * The compute backends compiled into this build and usable here, and their devices with names and free and
 * total memory (the CPU counts as one device).
 */
export function getBackendInfo(): BackendInfo {
  return native().backendInfo();
}
