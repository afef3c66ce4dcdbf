/**
 * train(): cross-entropy pretraining from scratch; distill(): knowledge distillation of a
 * draft (student) toward a target (teacher) with any divergence at any temperature, on
 * fixed text, teacher-generated, student-generated (on-policy) or mixed data;
 * evalAlignment(): the expected acceptance sum_x min(p_T, q_T) of drafts against a target
 * on held-out text, per decoding temperature.
 *
 * TypeScript orchestrates (data, schedule, checkpoints, logs); the native core computes
 * (forward, backward, kdLoss, AdamW). Runs resume: a checkpoint directory holds the
 * f32 master weights, both Adam moments and the step, and the batch of step s depends
 * only on (seed, s), so an interrupted run continues exactly where it would have been.
 */
import { appendFile, mkdir, rm, writeFile, copyFile, readFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { SpeculaError, withCallerStack } from '../errors.js';
import { checkVocabularies, SpeculativeDecoder } from '../engine/decoder.js';
import { acceptanceRateAsync, kdLossAsync, type Divergence } from '../kd.js';
import { initModel, PRESETS, type ModelShape, type PresetName, type WeightDType } from '../model/init.js';
import { loadModel, type KvCache, type Model } from '../model/model.js';
import { Tokenizer } from '../model/tokenizer.js';
import { setThreads, version } from '../runtime.js';
import { fail, knownKeys, object } from '../validate.js';
import { estimate } from '../bench/study.js';
import { heldOutBatches, loadCorpus, pick, windowBatch, type Batch, type Corpus } from './data.js';
import { cosineLr, STATE_FILE, Trainer } from './trainer.js';

/** What every step reports (also one line of the JSONL log). */
export interface StepReport {
  kind: 'step';
  step: number;
  steps: number;
  loss: number;
  /** KD runs with ceWeight > 0: the KD part and the cross-entropy part of the loss. */
  kdLoss?: number;
  ceLoss?: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
  elapsedMs: number;
  etaMs: number;
}

/** An evaluation on the held-out split (also a line of the log). */
export interface EvalReport {
  kind: 'eval';
  step: number;
  /** train: held-out cross-entropy (nats per token). */
  heldOutLoss?: number;
  /** distill: held-out divergence at the KD temperature, and expected acceptance per decoding temperature. */
  heldOutDivergence?: number;
  expectedAcceptance?: Record<string, number>;
  heldOutTokens: number;
}

export interface CommonOptions {
  /** Checkpoint directory: a loadModel-able model plus optimizer state; an existing run there resumes. */
  out: string;
  steps: number;
  /** Sequences per step (default 16). */
  batch?: number;
  /** Tokens per sequence (default 256). */
  seqLen?: number;
  /** Peak learning rate (default 3e-3 for train, 2e-3 for distill). */
  lr?: number;
  /** Final learning rate of the cosine schedule (default lr / 10). */
  minLr?: number;
  /** Linear warmup steps (default min(100, steps / 10)). */
  warmup?: number;
  weightDecay?: number;
  beta1?: number;
  beta2?: number;
  /** Global gradient-norm clip (default 1; 0 = none). */
  clip?: number;
  seed?: number;
  /** Steps between checkpoints (default 100; the last step always saves). */
  saveEvery?: number;
  /** Steps between held-out evaluations (default 100; 0 = only at the end). */
  evalEvery?: number;
  /** Held-out windows per evaluation (default 64). */
  evalWindows?: number;
  /** dtype of the checkpoint's model.safetensors (default 'f32'; the optimizer state is always f32). */
  dtype?: WeightDType;
  threads?: number;
  signal?: AbortSignal;
  onStep?: (r: StepReport) => void;
  onEval?: (r: EvalReport) => void;
  /** Called once with a description of the run (data, model sizes, resume point). */
  onStart?: (info: RunInfo) => void;
}

export interface RunInfo {
  data: string;
  parameters: number;
  trainTokens: number;
  heldOutTokens: number;
  resumedFrom: number;
  steps: number;
}

export interface TrainOptions extends CommonOptions {
  /** Text corpus (any loadDataset format; documents are joined into one token stream). */
  corpus: string;
  /** A preset name or fields over the `tiny` preset (vocabSize defaults to the tokenizer's size, at least 258). */
  config: PresetName | Partial<ModelShape>;
  /** 'byte' (default) or a directory holding tokenizer.json (+ tokenizer_config.json). */
  tokenizer?: string;
}

export interface RunResult {
  out: string;
  steps: number;
  finalLoss: number;
  tokensPerSecond: number;
  lastEval?: EvalReport;
  wallMs: number;
}

const COMMON_KEYS = ['out', 'steps', 'batch', 'seqLen', 'lr', 'minLr', 'warmup', 'weightDecay', 'beta1', 'beta2', 'clip', 'seed',
  'saveEvery', 'evalEvery', 'evalWindows', 'dtype', 'threads', 'signal', 'onStep', 'onEval', 'onStart'];

interface Resolved {
  out: string; steps: number; batch: number; seqLen: number; lr: number; minLr: number; warmup: number; weightDecay: number;
  beta1: number; beta2: number; clip: number; seed: number; saveEvery: number; evalEvery: number; evalWindows: number;
  dtype: WeightDType;
}

function num(o: Record<string, unknown>, key: string, def: number, lo: number, hi: number, integer = false): number {
  const v = o[key] ?? def;
  const ok = typeof v === 'number' && Number.isFinite(v) && v >= lo && v <= hi && (!integer || Number.isInteger(v));
  if (!ok) fail('E_VALUE', key, `${integer ? 'an integer' : 'a number'} in [${lo}, ${hi}]`, v);
  return v as number;
}

function resolveCommon(o: Record<string, unknown>, defaultLr: number): Resolved {
  if (typeof o.out !== 'string' || o.out === '') fail('E_ARG', 'out', 'a directory path', o.out);
  const steps = num(o, 'steps', NaN, 1, 1e9, true);
  const lr = num(o, 'lr', defaultLr, 0, 10);
  const dtype = (o.dtype ?? 'f32') as WeightDType;
  if (!['f32', 'f16', 'bf16'].includes(dtype)) fail('E_VALUE', 'dtype', "'f32', 'f16' or 'bf16'", o.dtype);
  if (o.threads !== undefined) setThreads(o.threads as number);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) fail('E_ARG', 'signal', 'an AbortSignal', o.signal);
  for (const k of ['onStep', 'onEval', 'onStart']) if (o[k] !== undefined && typeof o[k] !== 'function') fail('E_ARG', k, 'a function', o[k]);
  return {
    out: o.out as string, steps, lr, dtype,
    batch: num(o, 'batch', 16, 1, 4096, true),
    seqLen: num(o, 'seqLen', 256, 2, 1 << 20, true),
    minLr: num(o, 'minLr', lr / 10, 0, 10),
    warmup: num(o, 'warmup', Math.min(100, Math.floor(steps / 10)), 0, 1e9, true),
    weightDecay: num(o, 'weightDecay', 0.1, 0, 10),
    beta1: num(o, 'beta1', 0.9, 0, 0.999999),
    beta2: num(o, 'beta2', 0.99, 0, 0.999999),
    clip: num(o, 'clip', 1, 0, 1e9),
    seed: num(o, 'seed', 0, 0, 2 ** 32 - 1, true),
    saveEvery: num(o, 'saveEvery', 100, 1, 1e9, true),
    evalEvery: num(o, 'evalEvery', 100, 0, 1e9, true),
    evalWindows: num(o, 'evalWindows', 64, 1, 1e6, true),
  };
}

/** The options a resumed run must share with the run it continues. */
function fingerprint(kind: string, r: Resolved, extra: Record<string, unknown>): Record<string, unknown> {
  return { kind, batch: r.batch, seqLen: r.seqLen, seed: r.seed, ...extra };
}

function checkResume(dir: string, want: Record<string, unknown>): void {
  const file = path.join(dir, STATE_FILE);
  let state: Record<string, unknown>;
  try {
    state = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new SpeculaError('E_FORMAT', `${file}: cannot be read as JSON (${(err as Error).message})`);
  }
  const had = (state.run ?? {}) as Record<string, unknown>;
  for (const [k, v] of Object.entries(want)) {
    if (JSON.stringify(had[k]) !== JSON.stringify(v)) {
      throw new SpeculaError('E_STATE', `${dir}: holds a run with ${k} = ${JSON.stringify(had[k])}; this one has ${JSON.stringify(v)}. ` +
        'Resume with the same options, or choose another --out directory');
    }
  }
}

class Clock {
  readonly start = performance.now();
  tokens = 0;
  ms(): number {
    return performance.now() - this.start;
  }
}

function checkAbort(signal: AbortSignal | undefined, out: string, step: number): void {
  if (signal?.aborted) {
    throw new SpeculaError('E_ABORTED', `aborted at step ${step}; the last checkpoint in ${out} resumes the run`);
  }
}

async function logLine(file: string, rec: object): Promise<void> {
  await appendFile(file, `${JSON.stringify(rec)}\n`);
}

/** Writes a fresh model directory for `shape` with the tokenizer of `tokenizerDir` (or the byte tokenizer). */
async function initWithTokenizer(dir: string, shape: PresetName | Partial<ModelShape>, seed: number, tokenizerDir: string | null): Promise<void> {
  const base: Partial<ModelShape> = typeof shape === 'string'
    ? (() => {
        if (!(shape in PRESETS)) fail('E_VALUE', 'config', `a preset name (${Object.keys(PRESETS).join(', ')})`, shape);
        return { ...PRESETS[shape] };
      })()
    : { ...object('config', shape) };
  const explicitVocab = typeof shape === 'object' ? (shape.vocabSize as number | undefined) : undefined;
  if (tokenizerDir === null) {
    await initModel(dir, { config: { ...base, vocabSize: explicitVocab ?? 258 }, seed });
    return;
  }
  const tj = path.join(tokenizerDir, 'tokenizer.json');
  if (!existsSync(tj)) throw new SpeculaError('E_IO', `tokenizer: ${tokenizerDir} has no tokenizer.json`);
  const tcFile = path.join(tokenizerDir, 'tokenizer_config.json');
  const tc = existsSync(tcFile) ? (JSON.parse(await readFile(tcFile, 'utf8')) as Record<string, unknown>) : {};
  const tok = new Tokenizer(JSON.parse(await readFile(tj, 'utf8')), tc, undefined, tj);
  const vocab = Math.max(tok.size, 258, explicitVocab ?? 0);
  await initModel(dir, { config: { ...base, vocabSize: vocab }, seed });
  await copyFile(tj, path.join(dir, 'tokenizer.json'));
  if (existsSync(tcFile)) await copyFile(tcFile, path.join(dir, 'tokenizer_config.json'));
  else await rm(path.join(dir, 'tokenizer_config.json'), { force: true });
  const cfgFile = path.join(dir, 'config.json');
  const cfg = JSON.parse(await readFile(cfgFile, 'utf8')) as Record<string, unknown>;
  cfg.bos_token_id = tok.bosTokenId;
  cfg.eos_token_id = tok.eosTokenIds.length === 1 ? tok.eosTokenIds[0] : tok.eosTokenIds;
  if (tok.padTokenId !== null) cfg.pad_token_id = tok.padTokenId;
  await writeFile(cfgFile, `${JSON.stringify(cfg, null, 2)}\n`);
}

/** Loads `dir` as a trainer, restoring the optimizer state when it is a checkpoint. */
async function openTrainer(dir: string, contextLength: number): Promise<{ model: Model; trainer: Trainer; resumed: number; state?: Record<string, unknown> }> {
  const model = await loadModel(dir);
  if (model.contextLength < contextLength) {
    model.dispose();
    fail('E_VALUE', 'seqLen', `at most the model's context length ${model.contextLength}`, contextLength);
  }
  const trainer = new Trainer(model);
  if (existsSync(path.join(dir, STATE_FILE))) {
    const state = await trainer.restore(dir);
    return { model, trainer, resumed: trainer.step, state };
  }
  return { model, trainer, resumed: 0 };
}

/** Mean held-out cross-entropy over fixed windows. */
async function heldOutLoss(trainer: Trainer, batches: Batch[], seqLen: number): Promise<{ loss: number; tokens: number }> {
  let sum = 0, n = 0;
  for (const b of batches) {
    const rows = b.tokens.length / seqLen;
    const logits = await trainer.forward(b.tokens, rows, seqLen);
    const count = b.targets.reduce((a, t) => a + (t >= 0 ? 1 : 0), 0);
    sum += (await trainer.crossEntropy(logits, b.targets)) * count;
    n += count;
  }
  return { loss: n > 0 ? sum / n : 0, tokens: n };
}

/** Cross-entropy pretraining of a new model on a text corpus. */
export async function train(opts: TrainOptions): Promise<RunResult> {
  const caller = new Error();
  try {
    const o = object('opts', opts);
    knownKeys('opts', o, [...COMMON_KEYS, 'corpus', 'config', 'tokenizer']);
    const r = resolveCommon(o, 3e-3);
    if (typeof o.corpus !== 'string' || o.corpus === '') fail('E_ARG', 'corpus', 'a file path', o.corpus);
    if (o.config === undefined) fail('E_ARG', 'config', 'a preset name or a config object', o.config);
    const tokDir = o.tokenizer === undefined || o.tokenizer === 'byte' ? null : (o.tokenizer as string);
    if (tokDir !== null && typeof tokDir !== 'string') fail('E_ARG', 'tokenizer', "'byte' or a directory", o.tokenizer);
    const run = fingerprint('train', r, { corpus: path.resolve(o.corpus as string), config: o.config, tokenizer: tokDir ?? 'byte' });
    await mkdir(r.out, { recursive: true });
    if (existsSync(path.join(r.out, STATE_FILE))) checkResume(r.out, run);
    else await initWithTokenizer(r.out, o.config as PresetName | Partial<ModelShape>, r.seed, tokDir);
    const { model, trainer, resumed } = await openTrainer(r.out, r.seqLen);
    try {
      const corpus = loadCorpus(o.corpus as string, model.tokenizer, r.seqLen);
      const evalBatches = heldOutBatches(corpus.heldOut, r.batch, r.seqLen, r.evalWindows);
      opts.onStart?.({ data: corpus.dataset.description, parameters: trainer.parameters, trainTokens: corpus.train.length,
        heldOutTokens: corpus.heldOut.length, resumedFrom: resumed, steps: r.steps });
      const logFile = path.join(r.out, 'train-log.jsonl');
      const V = model.vocabSize;
      const logits = new Float32Array(r.batch * r.seqLen * V), dlogits = new Float32Array(logits.length);
      const clock = new Clock();
      let last = NaN, lastEval: EvalReport | undefined;
      const evaluate = async (step: number) => {
        if (evalBatches.length === 0) return;
        const h = await heldOutLoss(trainer, evalBatches, r.seqLen);
        lastEval = { kind: 'eval', step, heldOutLoss: h.loss, heldOutTokens: h.tokens };
        await logLine(logFile, lastEval);
        opts.onEval?.(lastEval);
      };
      for (let step = resumed; step < r.steps; ++step) {
        checkAbort(opts.signal, r.out, step);
        const b = windowBatch(corpus.train, r.batch, r.seqLen, r.seed, step);
        await trainer.forward(b.tokens, r.batch, r.seqLen, logits);
        dlogits.fill(0);
        const loss = await trainer.crossEntropy(logits, b.targets, dlogits);
        if (!Number.isFinite(loss)) throw nanError(r.out, step, 'loss', loss);
        await trainer.backward(dlogits);
        const lr = cosineLr(step, r.steps, r.lr, r.warmup, r.minLr);
        const gradNorm = await trainer.adamw({ lr, beta1: r.beta1, beta2: r.beta2, weightDecay: r.weightDecay, maxGradNorm: r.clip });
        if (!Number.isFinite(gradNorm)) throw nanError(r.out, step, 'gradient norm', gradNorm);
        last = loss;
        clock.tokens += r.batch * r.seqLen;
        await report(opts.onStep, logFile, clock, { step: step + 1, steps: r.steps, loss, lr, gradNorm }, resumed);
        const done = step + 1 === r.steps;
        if (r.evalEvery > 0 && (step + 1) % r.evalEvery === 0 && !done) await evaluate(step + 1);
        if ((step + 1) % r.saveEvery === 0 || done) await trainer.save(r.out, r.dtype, { run, version });
      }
      if (!lastEval || lastEval.step !== r.steps) await evaluate(r.steps);
      return { out: r.out, steps: r.steps, finalLoss: last, tokensPerSecond: clock.tokens / (clock.ms() / 1000), lastEval, wallMs: clock.ms() };
    } finally {
      trainer.dispose();
      model.dispose();
    }
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

function nanError(out: string, step: number, what: string, v: number): SpeculaError {
  return new SpeculaError('E_VALUE', `${what} is ${v} at step ${step + 1}: training stopped; the last good checkpoint in ${out} is kept ` +
    '(lower --lr or raise --warmup, then run the same command again to resume from it)');
}

async function report(cb: ((r: StepReport) => void) | undefined, logFile: string, clock: Clock,
  s: { step: number; steps: number; loss: number; lr: number; gradNorm: number; kdLoss?: number; ceLoss?: number }, resumed: number): Promise<void> {
  const ms = clock.ms();
  const rec: StepReport = {
    kind: 'step', ...s, tokens: clock.tokens, tokensPerSecond: clock.tokens / (ms / 1000), elapsedMs: ms,
    etaMs: (ms / Math.max(1, s.step - resumed)) * (s.steps - s.step),
  };
  await logLine(logFile, rec);
  cb?.(rec);
}

// ---------------------------------------------------------------------------------------
// Distillation
// ---------------------------------------------------------------------------------------

export type DataSource = 'fixed' | 'teacher' | 'student' | 'mixed';

export interface DistillOptions extends CommonOptions {
  teacher: string;
  /** An existing model directory to start from, or... */
  student?: string;
  /** ...a new one: a preset name or fields over `tiny` (vocabSize from the teacher). */
  studentConfig?: PresetName | Partial<ModelShape>;
  /** Text (fixed data) and prompts (generated data): any loadDataset format. */
  data: string;
  /**
   * fixed: windows of the data's documents; teacher: the teacher's continuations of the
   * data's prompts, sampled at dataTemperature; student: the current student's (on-policy,
   * refreshed every `refreshEvery` steps); mixed: each sequence of a batch from one of the
   * three, chosen uniformly from (seed, step, sequence).
   */
  dataSource?: DataSource;
  divergence?: Divergence;
  /** KD temperature T: p = softmax(z_teacher / T), q = softmax(z_student / T) (default 1). */
  temperature?: number;
  /** JSD beta (default 0.5). */
  beta?: number;
  /** Weight of next-token cross-entropy mixed in: (1 - w) KD + w CE (default 0). */
  ceWeight?: number;
  /** Sampling temperature of generated data (default: the KD temperature). */
  dataTemperature?: number;
  /** Steps between refreshes of the student snapshot that generates on-policy data (default 10). */
  refreshEvery?: number;
  /** Multiply the KD loss by T^2 (default false; AdamW is nearly invariant to it). */
  scaleByTemperatureSquared?: boolean;
  /** Decoding temperatures of the held-out expected-acceptance evaluation (default 0, 0.5, 1, 1.5, 2). */
  evalTemperatures?: number[];
}

const DIVS: Divergence[] = ['fkl', 'rkl', 'jsd', 'tvd'];
const SOURCES: DataSource[] = ['fixed', 'teacher', 'student', 'mixed'];
export const DEFAULT_EVAL_TEMPERATURES = [0, 0.5, 1, 1.5, 2];

/**
 * Logits of every position of a batch of sequences through the runtime's KV cache (any
 * supported architecture, Qwen2 included). The cache is kept and reset between calls, so
 * that a training loop does not allocate and page-fault it every step.
 */
class BatchLogits {
  #cache: KvCache | null = null;
  constructor(readonly model: Model) {}

  async run(tokens: Int32Array, rows: number, seqLen: number): Promise<Float32Array> {
    const c = this.#cache;
    if (!c || c.sequences < rows || c.capacity < seqLen) {
      c?.dispose();
      this.#cache = this.model.createCache({ sequences: rows, capacity: seqLen });
    } else {
      c.reset();
    }
    const items = Array.from({ length: rows }, (_, b) => ({ seq: b, tokens: tokens.subarray(b * seqLen, (b + 1) * seqLen), logits: 'all' as const }));
    return this.#cache!.forward(items);
  }

  dispose(): void {
    this.#cache?.dispose();
    this.#cache = null;
  }
}

/** Sequences generated from prompts by `model` at `temperature` (prompt + continuation, padded with EOS and masked). */
async function generatedBatch(model: Model, prompts: string[], rows: number[], seqLen: number, temperature: number,
  seed: number, step: number, batch: Batch): Promise<void> {
  const tok = model.tokenizer;
  const eos = tok.eosTokenIds[0] ?? 0;
  const inputs = rows.map((b) => {
    const p = prompts[pick(prompts.length, seed, step, b, 0x7e)]!;
    let ids = Array.from(tok.encode(p, { addSpecialTokens: false }));
    if (tok.bosTokenId !== null) ids = [tok.bosTokenId, ...ids];
    // Keep room for at least a quarter of the window of generated tokens.
    const keep = Math.max(1, Math.floor((seqLen * 3) / 4));
    if (ids.length > keep) ids = ids.slice(0, keep);
    return { tokens: ids };
  });
  const decoder = await SpeculativeDecoder.load({ target: model, draft: model, contextLength: seqLen + 1, maxBatch: rows.length });
  try {
    const seeds = rows.map((b) => BigInt(hashSeed(seed, step, b)));
    const maxNew = Math.max(...inputs.map((x) => seqLen + 1 - x.tokens.length));
    const out = (await decoder.generate(inputs, { maxNewTokens: maxNew, temperature, gamma: 0, seed: seeds })) as { tokens: number[] }[];
    rows.forEach((b, i) => {
      const seq = [...inputs[i]!.tokens, ...out[i]!.tokens].slice(0, seqLen + 1);
      const real = seq.length;
      while (seq.length < seqLen + 1) seq.push(eos);
      for (let t = 0; t < seqLen; ++t) {
        batch.tokens[b * seqLen + t] = seq[t]!;
        batch.targets[b * seqLen + t] = t + 1 < real ? seq[t + 1]! : -1;
      }
    });
  } finally {
    decoder.dispose();
  }
}

function hashSeed(seed: number, step: number, b: number): number {
  return pick(2 ** 32, seed, step, b, 0x5eed);
}

/** Held-out divergence at T and expected acceptance per decoding temperature, averaged over positions. */
async function alignment(teacherLogits: Float32Array, studentLogits: Float32Array, rows: number, vocab: number,
  temperatures: number[], kd?: { divergence: Divergence; temperature: number; beta: number }): Promise<{ divergence?: number; acceptance: number[] }> {
  const acceptance: number[] = [];
  for (const T of temperatures) {
    const a = await acceptanceRateAsync(teacherLogits, studentLogits, { rows, vocab, target: { temperature: T } });
    acceptance.push(a.reduce((s, x) => s + x, 0));
  }
  let divergence: number | undefined;
  if (kd) {
    const r = await kdLossAsync(teacherLogits, studentLogits, { rows, vocab, divergence: kd.divergence, temperature: kd.temperature, beta: kd.beta });
    divergence = r.loss * rows;
  }
  return { divergence, acceptance };
}

/** Distills a student (draft) toward a teacher (target). */
export async function distill(opts: DistillOptions): Promise<RunResult> {
  const caller = new Error();
  try {
    const o = object('opts', opts);
    knownKeys('opts', o, [...COMMON_KEYS, 'teacher', 'student', 'studentConfig', 'data', 'dataSource', 'divergence', 'temperature',
      'beta', 'ceWeight', 'dataTemperature', 'refreshEvery', 'scaleByTemperatureSquared', 'evalTemperatures']);
    const r = resolveCommon(o, 2e-3);
    for (const k of ['teacher', 'data']) if (typeof o[k] !== 'string' || o[k] === '') fail('E_ARG', k, 'a path', o[k]);
    if ((o.student === undefined) === (o.studentConfig === undefined)) {
      const state = existsSync(path.join(r.out, STATE_FILE));
      if (!state || o.student !== undefined) fail('E_ARG', 'student', 'exactly one of student (a directory) and studentConfig', o.student ?? o.studentConfig);
    }
    const divergence = (o.divergence ?? 'fkl') as Divergence;
    if (!DIVS.includes(divergence)) fail('E_VALUE', 'divergence', DIVS.join(' | '), o.divergence);
    const source = (o.dataSource ?? 'fixed') as DataSource;
    if (!SOURCES.includes(source)) fail('E_VALUE', 'dataSource', SOURCES.join(' | '), o.dataSource);
    const T = num(o, 'temperature', 1, 1e-6, 1e6);
    const beta = num(o, 'beta', 0.5, 1e-9, 1 - 1e-9);
    const ceWeight = num(o, 'ceWeight', 0, 0, 1);
    const dataT = num(o, 'dataTemperature', T, 0, 1e6);
    const refreshEvery = num(o, 'refreshEvery', 10, 1, 1e9, true);
    const evalTs = (o.evalTemperatures ?? DEFAULT_EVAL_TEMPERATURES) as number[];
    if (!Array.isArray(evalTs) || evalTs.some((t) => typeof t !== 'number' || !(t >= 0) || !Number.isFinite(t))) {
      fail('E_VALUE', 'evalTemperatures', 'an array of finite numbers >= 0', o.evalTemperatures);
    }
    const run = fingerprint('distill', r, {
      teacher: path.resolve(o.teacher as string), data: path.resolve(o.data as string), dataSource: source, divergence, temperature: T,
      beta, ceWeight, dataTemperature: dataT,
    });
    const teacher = await loadModel(o.teacher as string);
    const teacherLogits = new BatchLogits(teacher);
    let student: Awaited<ReturnType<typeof openTrainer>> | undefined;
    let snapshot: Model | undefined;
    const snapDir = path.join(r.out, '.student-snapshot');
    try {
      await mkdir(r.out, { recursive: true });
      const resuming = existsSync(path.join(r.out, STATE_FILE));
      if (resuming) {
        checkResume(r.out, run);
      } else if (o.student !== undefined) {
        const src = await loadModel(o.student as string);
        try {
          checkVocabularies(teacher, src);
          const t = new Trainer(src);
          try {
            await t.save(r.out, 'f32', { run, version, initializedFrom: path.resolve(o.student as string) }, { optimizer: false });
          } finally {
            t.dispose();
          }
        } finally {
          src.dispose();
        }
        await rm(path.join(r.out, STATE_FILE), { force: true });
      } else {
        // The teacher's tokenizer and vocabulary size, whatever the config says.
        const shape = o.studentConfig as PresetName | Partial<ModelShape>;
        if (typeof shape === 'string' && !(shape in PRESETS)) fail('E_VALUE', 'studentConfig', `a preset name (${Object.keys(PRESETS).join(', ')})`, shape);
        const base = { ...(typeof shape === 'string' ? PRESETS[shape] : object('studentConfig', shape)), vocabSize: teacher.vocabSize };
        await initWithTokenizer(r.out, base, r.seed, teacher.dir);
      }
      student = await openTrainer(r.out, r.seqLen);
      checkVocabularies(teacher, student.model);
      if (teacher.contextLength < r.seqLen + 1) fail('E_VALUE', 'seqLen', `below the teacher's context length ${teacher.contextLength}`, r.seqLen);
      const { trainer, model, resumed } = student;
      const V = model.vocabSize;
      const corpus: Corpus = loadCorpus(o.data as string, teacher.tokenizer, r.seqLen);
      if (source !== 'fixed' && corpus.prompts.length === 0) fail('E_VALUE', 'data', 'a file with prompts', o.data);
      const evalBatches = heldOutBatches(corpus.heldOut, r.batch, r.seqLen, r.evalWindows);
      opts.onStart?.({ data: corpus.dataset.description, parameters: trainer.parameters,
        trainTokens: corpus.train.length, heldOutTokens: corpus.heldOut.length, resumedFrom: resumed, steps: r.steps });
      const logFile = path.join(r.out, 'train-log.jsonl');
      const dlogits = new Float32Array(r.batch * r.seqLen * V);
      const mask = new Uint8Array(r.batch * r.seqLen);
      const clock = new Clock();
      let last = NaN, lastEval: EvalReport | undefined;
      const evaluate = async (step: number) => {
        if (evalBatches.length === 0) return;
        let div = 0, rows = 0;
        const acc = evalTs.map(() => 0);
        for (const b of evalBatches) {
          const n = b.tokens.length / r.seqLen;
          const zt = await teacherLogits.run(b.tokens, n, r.seqLen);
          const zs = await trainer.forward(b.tokens, n, r.seqLen);
          const a = await alignment(zt, zs, n * r.seqLen, V, evalTs, { divergence, temperature: T, beta });
          div += a.divergence!;
          a.acceptance.forEach((x, i) => (acc[i]! += x));
          rows += n * r.seqLen;
        }
        lastEval = {
          kind: 'eval', step, heldOutDivergence: div / rows, heldOutTokens: rows,
          expectedAcceptance: Object.fromEntries(evalTs.map((t, i) => [String(t), acc[i]! / rows])),
        };
        await logLine(logFile, lastEval);
        opts.onEval?.(lastEval);
      };
      const refresh = async (step: number) => {
        snapshot?.dispose();
        snapshot = undefined;
        await trainer.save(snapDir, 'f32', { snapshotOf: step }, { optimizer: false });
        snapshot = await loadModel(snapDir);
      };
      let snapStep = -1;
      for (let step = resumed; step < r.steps; ++step) {
        checkAbort(opts.signal, r.out, step);
        // The batch: fixed windows, then generated sequences where the source says so.
        const batch = windowBatch(corpus.train, r.batch, r.seqLen, r.seed, step);
        const kinds = Array.from({ length: r.batch }, (_, b) =>
          source === 'mixed' ? (['fixed', 'teacher', 'student'] as const)[pick(3, r.seed, step, b, 0x3c)]! : source);
        const teacherRows = kinds.flatMap((k, b) => (k === 'teacher' ? [b] : []));
        const studentRows = kinds.flatMap((k, b) => (k === 'student' ? [b] : []));
        if (teacherRows.length > 0) await generatedBatch(teacher, corpus.prompts, teacherRows, r.seqLen, dataT, r.seed, step, batch);
        if (studentRows.length > 0) {
          const due = step - (step % refreshEvery);
          if (snapStep !== due || !snapshot) {
            await refresh(due);
            snapStep = due;
          }
          await generatedBatch(snapshot!, corpus.prompts, studentRows, r.seqLen, dataT, r.seed, step, batch);
        }
        for (let i = 0; i < mask.length; ++i) mask[i] = batch.targets[i]! >= 0 ? 1 : 0;
        const zt = await teacherLogits.run(batch.tokens, r.batch, r.seqLen);
        const zs = await trainer.forward(batch.tokens, r.batch, r.seqLen);
        const kd = await kdLossAsync(zt, zs, {
          rows: r.batch * r.seqLen, vocab: V, divergence, temperature: T, beta, mask, gradOut: dlogits,
          scaleByTemperatureSquared: o.scaleByTemperatureSquared === true,
        });
        if (!Number.isFinite(kd.loss)) throw nanError(r.out, step, `the ${divergence} loss`, kd.loss);
        let loss = kd.loss, ce: number | undefined;
        if (ceWeight > 0) {
          if (ceWeight < 1) for (let i = 0; i < dlogits.length; ++i) dlogits[i]! *= 1 - ceWeight;
          else dlogits.fill(0);
          ce = await trainer.crossEntropy(zs, batch.targets, dlogits, ceWeight);
          loss = (1 - ceWeight) * kd.loss + ceWeight * ce;
        }
        await trainer.backward(dlogits);
        const lr = cosineLr(step, r.steps, r.lr, r.warmup, r.minLr);
        const gradNorm = await trainer.adamw({ lr, beta1: r.beta1, beta2: r.beta2, weightDecay: r.weightDecay, maxGradNorm: r.clip });
        if (!Number.isFinite(gradNorm)) throw nanError(r.out, step, 'gradient norm', gradNorm);
        last = loss;
        clock.tokens += mask.reduce((a, m) => a + m, 0);
        await report(opts.onStep, logFile, clock, { step: step + 1, steps: r.steps, loss, lr, gradNorm,
          ...(ce !== undefined ? { kdLoss: kd.loss, ceLoss: ce } : {}) }, resumed);
        const done = step + 1 === r.steps;
        if (r.evalEvery > 0 && (step + 1) % r.evalEvery === 0 && !done) await evaluate(step + 1);
        if ((step + 1) % r.saveEvery === 0 || done) await trainer.save(r.out, r.dtype, { run, version });
      }
      if (!lastEval || lastEval.step !== r.steps) await evaluate(r.steps);
      return { out: r.out, steps: r.steps, finalLoss: last, tokensPerSecond: clock.tokens / (clock.ms() / 1000), lastEval, wallMs: clock.ms() };
    } finally {
      snapshot?.dispose();
      await rm(snapDir, { recursive: true, force: true });
      student?.trainer.dispose();
      student?.model.dispose();
      teacherLogits.dispose();
      teacher.dispose();
    }
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

// ---------------------------------------------------------------------------------------
// eval-alignment
// ---------------------------------------------------------------------------------------

export interface EvalAlignmentOptions {
  target: string;
  drafts: string[];
  data: string;
  temperatures?: number[];
  /** Tokens per window (default 256). */
  seqLen?: number;
  /** Windows evaluated at most (default 64), consecutive from the start of the data. */
  windows?: number;
  batch?: number;
  threads?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface AlignmentRow {
  draft: string;
  /** Mean expected acceptance sum_x min(p_T, q_T) over the positions, per temperature. */
  acceptance: number[];
  /** 95% confidence half-width over windows (t interval), per temperature. */
  halfWidth: number[];
}

export interface AlignmentTable {
  data: string;
  temperatures: number[];
  positions: number;
  rows: AlignmentRow[];
}

/** The expected-acceptance table of drafts against a target on text windows (no generation). */
export async function evalAlignment(opts: EvalAlignmentOptions): Promise<AlignmentTable> {
  const caller = new Error();
  try {
    const o = object('opts', opts);
    knownKeys('opts', o, ['target', 'drafts', 'data', 'temperatures', 'seqLen', 'windows', 'batch', 'threads', 'onProgress']);
    if (typeof o.target !== 'string') fail('E_ARG', 'target', 'a model directory', o.target);
    if (!Array.isArray(o.drafts) || o.drafts.length === 0 || o.drafts.some((d) => typeof d !== 'string')) {
      fail('E_ARG', 'drafts', 'a non-empty array of model directories', o.drafts);
    }
    if (typeof o.data !== 'string') fail('E_ARG', 'data', 'a file path', o.data);
    const temps = (o.temperatures ?? DEFAULT_EVAL_TEMPERATURES) as number[];
    if (!Array.isArray(temps) || temps.length === 0 || temps.some((t) => typeof t !== 'number' || !(t >= 0) || !Number.isFinite(t))) {
      fail('E_VALUE', 'temperatures', 'a non-empty array of finite numbers >= 0', o.temperatures);
    }
    const seqLen = num(o, 'seqLen', 256, 2, 1 << 20, true);
    const windows = num(o, 'windows', 64, 1, 1e6, true);
    const batch = num(o, 'batch', 8, 1, 4096, true);
    if (o.threads !== undefined) setThreads(o.threads as number);
    const target = await loadModel(o.target as string);
    const drafts: Model[] = [];
    const runners: BatchLogits[] = [];
    try {
      for (const d of o.drafts as string[]) {
        const m = await loadModel(d);
        drafts.push(m);
        checkVocabularies(target, m);
      }
      const cap = Math.min(seqLen, target.contextLength, ...drafts.map((d) => d.contextLength));
      // Every document of the file (none held out), as one stream.
      const corpus = loadCorpus(o.data as string, target.tokenizer, cap, 0);
      const batches = heldOutBatches(corpus.train, batch, cap, windows);
      const V = target.vocabSize;
      const perWindow = drafts.map(() => temps.map(() => [] as number[]));
      const targetLogits = new BatchLogits(target);
      runners.push(targetLogits, ...drafts.map((d) => new BatchLogits(d)));
      let done = 0;
      const total = batches.length * drafts.length;
      for (const b of batches) {
        const n = b.tokens.length / cap;
        const zt = await targetLogits.run(b.tokens, n, cap);
        for (let d = 0; d < drafts.length; ++d) {
          const zd = await runners[d + 1]!.run(b.tokens, n, cap);
          for (let i = 0; i < temps.length; ++i) {
            const a = await acceptanceRateAsync(zt, zd, { rows: n * cap, vocab: V, target: { temperature: temps[i]! } });
            for (let w = 0; w < n; ++w) {
              let s = 0;
              for (let t = 0; t < cap; ++t) s += a[w * cap + t]!;
              perWindow[d]![i]!.push(s / cap);
            }
          }
          o.onProgress && (o.onProgress as (a: number, b: number) => void)(++done, total);
        }
      }
      const rows = drafts.map((_, d) => {
        const stats = perWindow[d]!.map((xs) => estimate(xs));
        return { draft: (o.drafts as string[])[d]!, acceptance: stats.map((e) => e.mean), halfWidth: stats.map((e) => (e.hi - e.lo) / 2) };
      });
      return { data: corpus.dataset.description, temperatures: temps, positions: batches.reduce((a, b) => a + b.tokens.length, 0), rows };
    } finally {
      for (const r of runners) r.dispose();
      for (const d of drafts) d.dispose();
      target.dispose();
    }
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

