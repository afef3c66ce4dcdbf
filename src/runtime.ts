/** Process-wide settings of the native core: the compute pool and the SIMD level. */
import { createRequire } from 'node:module';
import { native } from './native.js';
import { dimension, fail } from './validate.js';

export interface RuntimeInfo {
  /** specula's version (package.json). */
  version: string;
  /** Threads of the compute pool (default: the cores this process may use, or $SPECULA_THREADS). */
  threads: number;
  /** Cores this process may run on. */
  availableCores: number;
  /** Instruction set of the kernels, chosen at run time: 'avx512', 'avx2' or 'portable'. */
  simd: 'avx512' | 'avx2' | 'portable';
  /**
   * Whether products with bf16 weights run on AMX tiles (CPUs with AMX-BF16, unless
   * SPECULA_AMX=0): faster for many rows, other rounding (see amxPieces).
   */
  amx: boolean;
  /**
   * How many bf16 pieces each f32 activation is split into on AMX (0 when AMX is off).
   * 2 (the default): hi + lo, 16-17 significant bits, products within ~5e-7 of
   * sum |w x| (the SIMD kernels: ~4e-8). 3 (SPECULA_AMX=3): exact, as accurate as the SIMD
   * kernels, with 1.5x the tile products (a bf16 verification of 8 x 5 tokens ~1.2x
   * slower). Fixed for the life of the process.
   */
  amxPieces: 0 | 2 | 3;
  /**
   * Where the matrix kernels prefetch the next weights when a forward has 1-4 rows
   * (decoding, short verification passes): 'l1' (prefetcht0; measured best on Intel) or
   * 'l2' (prefetcht1; on AMD Zen 4, t0 cost bf16 decoding a third of its speed). Chosen
   * per CPU vendor (AMD: 'l2'), or by SPECULA_PREFETCH=l1|l2. Speed only: the results are
   * the same bits either way. Fixed for the life of the process.
   */
  prefetch: 'l1' | 'l2';
}

/** specula's version, from package.json. */
export const version: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

/** Sets the size of the process-wide compute pool (waits for running work). */
export function setThreads(threads: number): void {
  const n = dimension('threads', threads, 1);
  if (n > 1024) fail('E_VALUE', 'threads', 'an integer in [1, 1024]', threads);
  native().setThreads(n);
}

export function getThreads(): number {
  return native().threads();
}

export function runtimeInfo(): RuntimeInfo {
  const b = native();
  return {
    version, threads: b.threads(), availableCores: b.availableCores(), simd: b.simd(), amx: b.amx(),
    amxPieces: b.amxPieces() as 0 | 2 | 3, prefetch: b.matmulPrefetch(),
  };
}
