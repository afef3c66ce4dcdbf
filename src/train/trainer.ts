/**
 * Trainer: the native training state of one model (f32 master weights, gradients, AdamW
 * moments; native/core/train.h) and its checkpoints. A checkpoint is a Hugging Face
 * model directory that loadModel reads (config.json, model.safetensors in the chosen
 * dtype, tokenizer files) plus, beside it, optimizer.safetensors (f32 master weights
 * and both Adam moments) and trainer_state.json, from which a run resumes exactly.
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { SpeculaError } from '../errors.js';
import type { WeightDType } from '../model/init.js';
import { Model } from '../model/model.js';
import { native, type NativeParamTensor, type NativeTrainer } from '../native.js';
import { fail, isIntegerIn } from '../validate.js';
import { readSafetensors } from '../model/safetensors.js';
import { readF32Tensors, writeSafetensorsFile, type TensorData } from './safetensors-write.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Global gradient-norm clipping; 0 = none. */
  maxGradNorm?: number;
}

/** Files of a checkpoint directory besides the model itself. */
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'trainer_state.json';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json'];

export class Trainer {
  readonly model: Model;
  readonly tensors: readonly NativeParamTensor[];
  /** Floats of each flat array (with the alignment gaps). */
  readonly size: number;
  /** Parameters (without the gaps). */
  readonly parameters: number;
  #h: NativeTrainer | null;

  /** Copies the model's weights into f32 master weights (E_UNSUPPORTED for attention biases). */
  constructor(model: Model) {
    const b = native();
    this.model = model;
    this.#h = new b.NativeTrainer(Model.handle(model, 'Trainer'));
    this.tensors = this.#h.tensors();
    this.size = this.#h.size();
    this.parameters = this.tensors.reduce((a, t) => a + t.rows * t.cols, 0);
  }

  #live(what: string): NativeTrainer {
    if (!this.#h) throw new SpeculaError('E_STATE', `${what}: the trainer has been disposed`);
    return this.#h;
  }

  get vocabSize(): number {
    return this.model.vocabSize;
  }

  /** Optimizer steps taken. */
  get step(): number {
    return this.#live('step').step();
  }

  /** Logits [batch * seq, vocab] of `batch` sequences of `seq` tokens; keeps the activations for backward. */
  async forward(tokens: Int32Array, batch: number, seq: number, out?: Float32Array): Promise<Float32Array> {
    const h = this.#live('forward');
    const logits = out ?? new Float32Array(batch * seq * this.vocabSize);
    await h.forward(tokens, batch, seq, logits);
    return logits;
  }

  /** Gradients of sum(dlogits * logits) for the last forward (replacing the previous ones). */
  async backward(dlogits: Float32Array): Promise<void> {
    await this.#live('backward').backward(dlogits);
  }

  /**
   * Mean cross-entropy of the rows with targets >= 0; with dlogits, adds weight * its
   * gradient to it.
   */
  async crossEntropy(logits: Float32Array, targets: Int32Array, dlogits: Float32Array | null = null, weight = 1): Promise<number> {
    return this.#live('crossEntropy').crossEntropy(logits, targets, dlogits, weight);
  }

  /** One AdamW step; returns the gradient norm before clipping (non-finite: nothing changed). */
  async adamw(o: AdamWOptions): Promise<number> {
    const h = this.#live('adamw');
    return h.adamw(Float64Array.of(o.lr, o.beta1 ?? 0.9, o.beta2 ?? 0.999, o.eps ?? 1e-8, o.weightDecay ?? 0, o.maxGradNorm ?? 0));
  }

  /** Floating-point operations of one forward + backward of batch x seq tokens. */
  flops(batch: number, seq: number): number {
    return this.#live('flops').flops(batch, seq);
  }

  /** Wall time of the last forward and backward, and of the matmuls inside them (with their flops). */
  timing(): { forwardMs: number; backwardMs: number; matmulMs: number; matmulFlops: number } {
    const t = this.#live('timing').timing();
    return { forwardMs: t[0]!, backwardMs: t[1]!, matmulMs: t[2]!, matmulFlops: t[3]! };
  }

  /** A copy of a flat array: 'params', 'grads', 'm' or 'v'. */
  read(which: 'params' | 'grads' | 'm' | 'v'): Float32Array {
    const out = new Float32Array(this.size);
    this.#live('read').read(which, out);
    return out;
  }

  write(which: 'params' | 'grads' | 'm' | 'v', src: Float32Array): void {
    this.#live('write').write(which, src);
  }

  /** The tensors of a flat array by Hugging Face name (views into `flat`). */
  split(flat: Float32Array, suffix = ''): TensorData[] {
    return this.tensors.map((t) => ({
      name: t.name + suffix,
      shape: t.cols === 1 ? [t.rows] : [t.rows, t.cols],
      data: flat.subarray(t.offset, t.offset + t.rows * t.cols),
    }));
  }

  /**
   * Writes a checkpoint: `dir` becomes a model directory (config.json with torch_dtype,
   * model.safetensors in `dtype`, the tokenizer files of the source model) plus
   * optimizer.safetensors and trainer_state.json (`state`, with the step).
   */
  async save(dir: string, dtype: WeightDType, state: Record<string, unknown>, opts: { optimizer?: boolean } = {}): Promise<void> {
    const h = this.#live('save');
    await mkdir(dir, { recursive: true });
    const src = this.model.dir;
    const config = JSON.parse(await readFile(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
    config.torch_dtype = dtype === 'f32' ? 'float32' : dtype === 'f16' ? 'float16' : 'bfloat16';
    if (path.resolve(src) !== path.resolve(dir)) {
      for (const f of TOKENIZER_FILES) if (existsSync(path.join(src, f))) await copyFile(path.join(src, f), path.join(dir, f));
    }
    const params = this.read('params');
    await writeSafetensorsFile(path.join(dir, 'model.safetensors'), this.split(params), dtype);
    if (opts.optimizer !== false) {
      await writeSafetensorsFile(path.join(dir, OPTIMIZER_FILE), [
        ...this.split(params, '.master'), ...this.split(this.read('m'), '.exp_avg'), ...this.split(this.read('v'), '.exp_avg_sq'),
      ], 'f32', { format: 'specula-adamw', step: String(h.step()) });
    }
    await writeFile(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    await writeFile(path.join(dir, STATE_FILE), `${JSON.stringify({ ...state, step: h.step() }, null, 2)}\n`);
  }

  /**
   * Restores master weights, moments and the step from a checkpoint written by save()
   * (the model this trainer was made from should be that checkpoint). Returns its state.
   */
  async restore(dir: string): Promise<Record<string, unknown>> {
    const h = this.#live('restore');
    const stateFile = path.join(dir, STATE_FILE);
    let state: Record<string, unknown>;
    try {
      state = JSON.parse(await readFile(stateFile, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new SpeculaError('E_FORMAT', `${stateFile}: cannot be read as JSON (${(err as Error).message})`);
    }
    if (!isIntegerIn(state.step, 0)) fail('E_FORMAT', `${stateFile}: step`, 'a non-negative integer', state.step);
    // The step the optimizer file was written at wins over trainer_state.json's: a crash
    // between the two writes must not pair new weights with an old step.
    const optFile = path.join(dir, OPTIMIZER_FILE);
    const metaStep = Number(readSafetensors(optFile).metadata?.step);
    if (Number.isInteger(metaStep) && metaStep >= 0) state.step = metaStep;
    const tensors = await readF32Tensors(optFile);
    const flat = (suffix: string) => {
      const out = new Float32Array(this.size);
      for (const t of this.tensors) {
        const d = tensors.get(t.name + suffix);
        if (!d || d.length !== t.rows * t.cols) {
          throw new SpeculaError('E_FORMAT', `${path.join(dir, OPTIMIZER_FILE)}: tensor ${t.name}${suffix} is missing or has the wrong size`);
        }
        out.set(d, t.offset);
      }
      return out;
    };
    h.write('params', flat('.master'));
    h.write('m', flat('.exp_avg'));
    h.write('v', flat('.exp_avg_sq'));
    h.setStep(state.step as number);
    return state;
  }

  dispose(): void {
    this.#h?.dispose();
    this.#h = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The learning rate at `step` (0-based) of a cosine schedule with linear warmup, decaying to minLr at `steps`. */
export function cosineLr(step: number, steps: number, lr: number, warmup: number, minLr = 0): number {
  if (warmup > 0 && step < warmup) return (lr * (step + 1)) / warmup;
  const span = Math.max(1, steps - warmup);
  const t = Math.min(1, Math.max(0, (step - warmup) / span));
  return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * t));
}
