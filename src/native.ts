/**
 * Loads the native addon and types its whole surface (one file, so that the contract
 * between TypeScript and C++ is in one place). Internal: the public API wraps it.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SpeculaError } from './errors.js';

/** The kernels' device argument: 0 cpu, 1 cuda, 2 auto. */
export type DeviceCode = 0 | 1 | 2;

/** [temperature, topK (0 = off), topP (1 = off), minP (0 = off)] per entry. */
export type PackedParams = Float64Array;

export interface Binding {
  setErrorClass(cls: typeof SpeculaError): void;
  sample(
    logits: Float32Array, rows: number, vocab: number, params: PackedParams,
    seeds: BigUint64Array, offsets: Float64Array | null, out: Int32Array, async: boolean, device: DeviceCode,
  ): undefined | Promise<void>;
  probabilities(
    logits: Float32Array, rows: number, vocab: number, params: PackedParams,
    out: Float32Array, async: boolean, device: DeviceCode,
  ): undefined | Promise<void>;
  verify(
    targetLogits: Float32Array, draftLogits: Float32Array, draftTokens: Int32Array,
    draftLengths: Int32Array | null, batch: number, gamma: number, vocab: number,
    target: PackedParams, draft: PackedParams, seeds: BigUint64Array, offsets: Float64Array | null,
    tokens: Int32Array, accepted: Int32Array, emitted: Int32Array,
    acceptProbability: Float32Array, expectedAcceptance: Float32Array, async: boolean, device: DeviceCode,
  ): undefined | Promise<void>;
  kdLoss(
    teacher: Float32Array, student: Float32Array, rows: number, vocab: number, divergence: 0 | 1 | 2 | 3,
    temperature: number, beta: number, mask: Uint8Array | null, scaleT2: boolean,
    perRow: Float32Array, grad: Float32Array | null, async: false, device: DeviceCode,
  ): number;
  kdLoss(
    teacher: Float32Array, student: Float32Array, rows: number, vocab: number, divergence: 0 | 1 | 2 | 3,
    temperature: number, beta: number, mask: Uint8Array | null, scaleT2: boolean,
    perRow: Float32Array, grad: Float32Array | null, async: true, device: DeviceCode,
  ): Promise<number>;
  acceptanceRate(
    target: Float32Array, draft: Float32Array, rows: number, vocab: number, targetParams: PackedParams,
    draftParams: PackedParams, out: Float32Array, async: boolean, device: DeviceCode,
  ): undefined | Promise<void>;
  readPass(arrays: Float32Array[]): number;
  backends(): { cuda: { built: boolean; available: boolean; reason: string; device: string } };
  /** Runs the FMA-peak loop on every pool thread; returns the flops done. */
  fmaPeak(iters: number): number;
  loadModel(config: NativeModelConfig, files: string[], tensors: NativeTensor[]): Promise<NativeModel>;
  NativeCache: new (model: NativeModel, sequences: number, capacity: number) => NativeCache;
  NativeEngine: new (target: NativeModel, draft: NativeModel | null, slots: number, capacity: number) => NativeEngine;
  NativeTrainer: new (model: NativeModel) => NativeTrainer;
  setThreads(n: number): void;
  threads(): number;
  availableCores(): number;
  simd(): 'avx512' | 'avx2' | 'portable';
  amx(): boolean;
  amxPieces(): number;
  matmulPrefetch(): 'l1' | 'l2';
  setSimd(level: 'avx512' | 'avx2' | 'portable'): boolean;
}

/** The model config as native/core/model.h's ModelConfig wants it. */
export interface NativeModelConfig {
  vocab: number; hidden: number; intermediate: number; layers: number; heads: number; kvHeads: number;
  headDim: number; context: number; rmsEps: number; ropeTheta: number; ropeLlama3: boolean;
  ropeFactor?: number; ropeLowFreq?: number; ropeHighFreq?: number; ropeOriginalMax?: number;
  tieEmbeddings: boolean; qkvBias: boolean; oBias: boolean;
}

/** [name, file index, absolute byte offset, bytes, safetensors dtype, shape]. */
export type NativeTensor = [string, number, number, number, string, number[]];

export interface NativeModel {
  info(): { weightBytesPerToken: number; mappedBytes: number };
  dispose(): void;
}

export interface NativeCache {
  length(seq: number): number;
  truncate(seq: number, length: number): void;
  reset(): void;
  bytes(): number;
  forward(seqs: Int32Array, counts: Int32Array, nLogits: Int32Array, tokens: Int32Array, out: Float32Array, async: true): Promise<void>;
  forward(seqs: Int32Array, counts: Int32Array, nLogits: Int32Array, tokens: Int32Array, out: Float32Array, async: false): undefined;
  dispose(): void;
}

/** What one engine step did (native/core/engine.h), per stepped sequence b. */
export interface NativeStepResult {
  slots: Int32Array;
  drafted: Int32Array;
  accepted: Int32Array;
  /** Emitted tokens that joined the sequence (fewer than accepted + 1 after an EOS). */
  kept: Int32Array;
  /** 0 running, 1 length (max tokens or context), 2 eos. */
  finish: Int32Array;
  /** emitted[emittedOffsets[b] .. emittedOffsets[b + 1]]: the accepted + 1 tokens of verification. */
  emittedOffsets: Int32Array;
  emitted: Int32Array;
  /** sum_x min(p, q) at each tested position. */
  expectedOffsets: Int32Array;
  expected: Float32Array;
  /** [prefill, draft, target, sampling, total] ms, draft forwards. */
  times: Float64Array;
}

export interface NativeEngine {
  /** params: [target T, topK, topP, minP, draft T, topK, topP, minP]. Returns the slot. */
  add(prompt: Int32Array, params: Float64Array, gamma: number, seed: bigint, maxNewTokens: number, eos: Int32Array): number;
  remove(slot: number): void;
  freeSlots(): number;
  step(): Promise<NativeStepResult>;
  dispose(): void;
}

/** One parameter tensor of a NativeTrainer's flat arrays (native/core/train.h). */
export interface NativeParamTensor { name: string; offset: number; rows: number; cols: number; matrix: boolean }

export type TrainerArray = 'params' | 'grads' | 'm' | 'v';

export interface NativeTrainer {
  tensors(): NativeParamTensor[];
  size(): number;
  read(which: TrainerArray, out: Float32Array): void;
  write(which: TrainerArray, src: Float32Array): void;
  step(): number;
  setStep(step: number): void;
  forward(tokens: Int32Array, batch: number, seq: number, logits: Float32Array): Promise<void>;
  backward(dlogits: Float32Array): Promise<void>;
  crossEntropy(logits: Float32Array, targets: Int32Array, dlogits: Float32Array | null, weight: number): Promise<number>;
  /** [lr, beta1, beta2, eps, weightDecay, maxGradNorm] -> the gradient norm before clipping. */
  adamw(options: Float64Array): Promise<number>;
  flops(batch: number, seq: number): number;
  /** [forwardMs, backwardMs, matmulMs, matmulFlops] of the last forward + backward. */
  timing(): Float64Array;
  dispose(): void;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Where the addon may be: $SPECULA_ADDON, the node-gyp build, the cmake-js build. */
export function addonCandidates(): string[] {
  const list = [
    path.join(packageRoot, 'build', 'Release', 'specula.node'),
    path.join(packageRoot, 'build-cmake', 'Release', 'specula.node'),
  ];
  const env = process.env.SPECULA_ADDON;
  return env ? [path.resolve(env)] : list;
}

let binding: Binding | undefined;

export function native(): Binding {
  if (binding) return binding;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const file of addonCandidates()) {
    if (!existsSync(file)) {
      tried.push(`${file} (missing)`);
      continue;
    }
    try {
      const b = require(file) as Binding;
      b.setErrorClass(SpeculaError);
      binding = b;
      return b;
    } catch (err) {
      tried.push(`${file} (${(err as Error).message})`);
    }
  }
  throw new SpeculaError(
    'E_UNSUPPORTED',
    `the specula native addon could not be loaded. Tried:\n  ${tried.join('\n  ')}\n` +
      'Build it with `npm rebuild specula` (node-gyp: needs python3, make and a C++17 compiler) ' +
      'or `npm run build:cmake` (cmake-js: needs CMake >= 3.19), or point SPECULA_ADDON at a built specula.node.',
  );
}
