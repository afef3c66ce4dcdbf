/**
 * What the kernels can run on. The CPU is always there; the CUDA backend exists in builds
 * made with `npm run build:cmake -- -DSPECULA_CUDA=ON` and is available where a CUDA
 * device and driver answer (the same binary falls back to the CPU elsewhere).
 */
import { native } from './native.js';

export interface BackendInfo {
  /** Compiled into this build. */
  built: boolean;
  /** Built, and a device and driver answered. */
  available: boolean;
  /** Why it is not available (absent when it is). */
  reason?: string;
  /** The device's name and compute capability (when available). */
  device?: string;
}

export interface Backends {
  cpu: BackendInfo;
  cuda: BackendInfo;
}

/**
 * The kernels' backends: `device: 'cuda'` needs `cuda.available`; `'auto'` (the default)
 * uses CUDA when available and the input logits are at least 4 MiB.
 */
export function backends(): Backends {
  const { cuda } = native().backends();
  return {
    cpu: { built: true, available: true },
    cuda: {
      built: cuda.built,
      available: cuda.available,
      ...(cuda.available ? { device: cuda.device } : { reason: cuda.reason }),
    },
  };
}
