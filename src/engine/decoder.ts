/**
 * SpeculativeDecoder: the speculative loop of native/core/engine.h behind a Node API.
 *
 * Scheduling: one decoder runs one batch. generate() and stream() calls queue their
 * sequences; at every step boundary queued sequences join the running batch while slots
 * are free (`maxBatch`), and finished ones leave it. So concurrent calls share the batched
 * forwards (continuous batching), and a sequence's tokens are the same as if it ran
 * alone: they depend only on its prompt, options and seed (batch-invariant logits,
 * counter-based randomness).
 */
import { randomBytes } from 'node:crypto';
import { SpeculaError, withCallerStack } from '../errors.js';
import { loadModel, Model } from '../model/model.js';
import { native, type NativeEngine, type NativeStepResult } from '../native.js';
import { setThreads } from '../runtime.js';
import { fail, isIntegerIn, knownKeys, object, packParams, type SamplingParams } from '../validate.js';
import { TextState } from './text.js';

export interface DecoderLoadOptions {
  /** A model directory (loaded now and owned by the decoder) or a loaded Model (not owned). */
  target: string | Model;
  draft: string | Model;
  /** Size of the process-wide compute pool (as setThreads). */
  threads?: number;
  /** Longest sequence, prompt included (default: the smaller of the models' context lengths). */
  contextLength?: number;
  /** Sequences decoded together at most (default 16); more wait in a queue. */
  maxBatch?: number;
}

export type DraftSamplingOptions = Partial<SamplingParams>;

export interface GenerateOptions {
  /** Tokens to generate at most (>= 1). */
  maxNewTokens: number;
  /** Target temperature; 0 = greedy. */
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** The draft's sampling parameters; each defaults to the target's. */
  draft?: DraftSamplingOptions;
  /** Tokens drafted per step (default 4); 0 = autoregressive decoding of the target. */
  gamma?: number;
  /**
   * Seed (uint64). For input i the sequence seed is splitmix64(seed + i + 1), so input 0 of
   * a batch has the seed a single input would have. An array gives each input its own
   * sequence seed as is. Default: random.
   */
  seed?: number | bigint | readonly (number | bigint)[];
  /** Strings that end generation; the text is cut before the first one found. */
  stop?: readonly string[];
  /**
   * Keep generating through end-of-sequence tokens, up to maxNewTokens or the context
   * (default false). For throughput measurements over a fixed token budget, as
   * `specula bench` does.
   */
  ignoreEos?: boolean;
  /** Ends generation at the next step boundary (finishReason 'aborted'). */
  signal?: AbortSignal;
  /** Called after every step of every sequence of this call. */
  onStep?: (stats: StepInfo) => void;
}

export type FinishReason = 'length' | 'eos' | 'stop' | 'aborted';

export interface GenerationStats {
  /** Tokens drafted per step asked for. */
  gamma: number;
  /** Target forwards (= speculative steps). */
  targetCalls: number;
  /** Draft forwards this sequence took part in. */
  draftCalls: number;
  /** Tokens drafted. */
  drafted: number;
  /** Drafted tokens accepted. */
  accepted: number;
  /** Tokens verification emitted: accepted + targetCalls (tokens after an EOS or stop string included). */
  emitted: number;
  /** Acceptance tests decided: accepted + rejections (a step stops testing at its first rejection). */
  tested: number;
  /** Realized per-token acceptance: accepted / tested, the estimate of α. 0 before any test. */
  acceptanceRate: number;
  /** Mean of sum_x min(p(x), q(x)) over the tested positions: the expected acceptance. */
  expectedAcceptance: number;
  /** τ: emitted tokens per target call. */
  meanAcceptedLength: number;
  /** [i]: fraction of drafting steps whose i-th drafted token was accepted (non-increasing). */
  acceptanceByPosition: number[];
  prefillMs: number;
  draftMs: number;
  targetMs: number;
  /** Draft sampling, verification and cache rollback. */
  samplingMs: number;
  /** Wall time from this sequence's first step to its last. */
  elapsedMs: number;
  /** elapsedMs minus prefill, draft, target and sampling: the loop's own time. */
  overheadMs: number;
  /** Generated tokens per second of elapsedMs. */
  tokensPerSecond: number;
  /** c: mean draft forward time / mean target forward time. */
  costRatio: number;
  /** Leviathan et al.: (1 - α^(γ+1)) / ((1 - α)(γc + 1)) with the realized α and c. */
  predictedSpeedup: number;
}

export interface StepInfo extends GenerationStats {
  /** Index of the input this sequence belongs to. */
  index: number;
  /** Tokens generated so far. */
  generated: number;
}

export interface GenerateResult {
  text: string;
  /** Generated token ids (a final EOS included; the prompt not). */
  tokens: number[];
  finishReason: FinishReason;
  stats: GenerationStats;
}

export interface StreamChunk {
  /** Index of the input. */
  index: number;
  /** New text since the last chunk of this input. */
  text: string;
  /** New tokens since the last chunk of this input. */
  tokens: number[];
  stats: GenerationStats;
  /** Set on the last chunk of this input. */
  finishReason?: FinishReason;
}

export type GenerateInput = string | { tokens: readonly number[] };

const MASK64 = (1n << 64n) - 1n;

/**
 * Leviathan et al.'s expected speedup of speculative decoding with per-token acceptance
 * alpha, gamma drafted tokens per step and cost ratio c (draft step / target step):
 * (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)).
 */
export function predictedSpeedup(alpha: number, gamma: number, c: number): number {
  return expectedTokensPerStep(alpha, gamma) / (gamma * c + 1);
}

/** Expected tokens per target call for i.i.d. acceptance alpha: (1 - alpha^(gamma+1)) / (1 - alpha). */
export function expectedTokensPerStep(alpha: number, gamma: number): number {
  return alpha >= 1 ? gamma + 1 : (1 - alpha ** (gamma + 1)) / (1 - alpha);
}

/** splitmix64 (Steele et al.): one well-mixed 64-bit value per (seed, index). */
export function sequenceSeed(seed: bigint, index: number): bigint {
  let z = (seed + BigInt(index + 1) * 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

function seedValue(name: string, v: unknown): bigint {
  if (typeof v === 'number') {
    if (!isIntegerIn(v, 0)) fail('E_VALUE', name, 'a non-negative safe integer or a bigint in [0, 2^64)', v);
    return BigInt(v);
  }
  if (typeof v === 'bigint') {
    if (v < 0n || v > MASK64) fail('E_VALUE', name, 'a bigint in [0, 2^64)', v);
    return v;
  }
  return fail('E_ARG', name, 'a number or a bigint', v);
}

interface Sequence {
  index: number;
  prompt: Int32Array;
  seed: bigint;
  request: Request;
  slot: number;
  text: TextState;
  sent: number;         // text characters streamed
  sentTokens: number;   // tokens streamed
  finishReason: FinishReason | null;
  start: number;        // performance.now() of its first step
  end: number;
  // statistics
  targetCalls: number; draftCalls: number; drafted: number; accepted: number; emitted: number;
  tested: number; expectedSum: number; draftingSteps: number; acceptedAt: number[];
  prefillMs: number; draftMs: number; targetMs: number; samplingMs: number;
}

interface Request {
  params: Float64Array;
  gamma: number;
  maxNewTokens: number;
  eos: Int32Array;
  stops: readonly string[];
  signal: AbortSignal | undefined;
  onStep: ((s: StepInfo) => void) | undefined;
  aborted: boolean;
  seqs: Sequence[];
  open: number;
  failed: unknown;
  onChunk: ((c: StreamChunk) => void) | null;
  done: (err: unknown) => void;
  detach: () => void;
}

const GEN_KEYS = ['maxNewTokens', 'temperature', 'topK', 'topP', 'minP', 'draft', 'gamma', 'seed', 'stop', 'ignoreEos', 'signal', 'onStep'];

function statsOf(s: Sequence, gamma: number): GenerationStats {
  const tests = s.tested;
  const alpha = tests > 0 ? s.accepted / tests : 0;
  const perDraft = s.draftCalls > 0 ? s.draftMs / s.draftCalls : 0;
  const perTarget = s.targetCalls > 0 ? s.targetMs / s.targetCalls : 0;
  const c = perTarget > 0 ? perDraft / perTarget : 0;
  const elapsed = s.end > s.start ? s.end - s.start : 0;
  const generated = s.text.tokens.length;
  return {
    gamma,
    targetCalls: s.targetCalls,
    draftCalls: s.draftCalls,
    drafted: s.drafted,
    accepted: s.accepted,
    emitted: s.emitted,
    tested: tests,
    acceptanceRate: alpha,
    expectedAcceptance: tests > 0 ? s.expectedSum / tests : 0,
    meanAcceptedLength: s.targetCalls > 0 ? s.emitted / s.targetCalls : 0,
    acceptanceByPosition: s.acceptedAt.map((n) => (s.draftingSteps > 0 ? n / s.draftingSteps : 0)),
    prefillMs: s.prefillMs,
    draftMs: s.draftMs,
    targetMs: s.targetMs,
    samplingMs: s.samplingMs,
    elapsedMs: elapsed,
    overheadMs: Math.max(0, elapsed - s.prefillMs - s.draftMs - s.targetMs - s.samplingMs),
    tokensPerSecond: elapsed > 0 ? generated / (elapsed / 1000) : 0,
    costRatio: c,
    predictedSpeedup: predictedSpeedup(alpha, gamma, c),
  };
}

/** Checks that two tokenizers agree on every id and on the special tokens. */
/** Throws E_UNSUPPORTED naming the first difference between two models' vocabularies. */
export function checkVocabularies(target: Model, draft: Model): void {
  const mismatch = (what: string) => {
    throw new SpeculaError('E_UNSUPPORTED', `target and draft vocabularies differ: ${what}`);
  };
  if (target.vocabSize !== draft.vocabSize) mismatch(`vocabulary size ${target.vocabSize} vs ${draft.vocabSize}`);
  const a = target.tokenizer, b = draft.tokenizer;
  const n = Math.max(a.size, b.size);
  for (let id = 0; id < n; ++id) {
    const x = a.idToToken(id), y = b.idToToken(id);
    if (x !== y) mismatch(`token ${id} is ${JSON.stringify(x ?? null)} in the target, ${JSON.stringify(y ?? null)} in the draft`);
  }
  if (a.bosTokenId !== b.bosTokenId) mismatch(`BOS token ${a.bosTokenId} vs ${b.bosTokenId}`);
  if (a.padTokenId !== b.padTokenId) mismatch(`pad token ${a.padTokenId} vs ${b.padTokenId}`);
  if (a.eosTokenIds.join(',') !== b.eosTokenIds.join(',')) mismatch(`EOS tokens [${a.eosTokenIds}] vs [${b.eosTokenIds}]`);
}

export class SpeculativeDecoder {
  readonly target: Model;
  readonly draft: Model;
  /** Longest sequence, prompt included. */
  readonly contextLength: number;
  readonly maxBatch: number;
  #engine: NativeEngine | null;
  readonly #owned: Model[];
  readonly #queue: Sequence[] = [];
  readonly #active = new Map<number, Sequence>();
  #loop: Promise<void> | null = null;
  #disposed = false;

  private constructor(target: Model, draft: Model, owned: Model[], context: number, maxBatch: number) {
    this.target = target;
    this.draft = draft;
    this.#owned = owned;
    this.contextLength = context;
    this.maxBatch = maxBatch;
    const b = native();
    this.#engine = new b.NativeEngine(Model.handle(target, 'target'), Model.handle(draft, 'draft'), maxBatch, context);
  }

  /** Loads (or takes) a target and a draft model with compatible vocabularies. */
  static async load(opts: DecoderLoadOptions): Promise<SpeculativeDecoder> {
    const caller = new Error();
    const owned: Model[] = [];
    try {
      const o = object('opts', opts);
      knownKeys('opts', o, ['target', 'draft', 'threads', 'contextLength', 'maxBatch']);
      for (const k of ['target', 'draft'] as const) {
        if (typeof o[k] !== 'string' && !(o[k] instanceof Model)) fail('E_ARG', `opts.${k}`, 'a model directory or a Model', o[k]);
      }
      if (o.contextLength !== undefined && !isIntegerIn(o.contextLength, 2, 1 << 24)) {
        fail('E_VALUE', 'opts.contextLength', 'an integer in [2, 16777216]', o.contextLength);
      }
      const maxBatch = o.maxBatch ?? 16;
      if (!isIntegerIn(maxBatch, 1, 4096)) fail('E_VALUE', 'opts.maxBatch', 'an integer in [1, 4096]', o.maxBatch);
      if (o.threads !== undefined) setThreads(o.threads as number);
      const get = async (v: unknown) => {
        if (v instanceof Model) return v;
        const m = await loadModel(v as string, o.contextLength !== undefined ? { contextLength: o.contextLength as number } : {});
        owned.push(m);
        return m;
      };
      const target = await get(o.target);
      const draft = await get(o.draft);
      checkVocabularies(target, draft);
      const ctx = Math.min(target.contextLength, draft.contextLength);
      if (o.contextLength !== undefined && (o.contextLength as number) > ctx) {
        fail('E_VALUE', 'opts.contextLength', `at most the models' context length ${ctx}`, o.contextLength);
      }
      return new SpeculativeDecoder(target, draft, owned, (o.contextLength as number | undefined) ?? ctx, maxBatch);
    } catch (err) {
      for (const m of owned) m.dispose();
      throw withCallerStack(err, caller);
    }
  }

  /** Generates for one input (one result) or an array of inputs (one result each). */
  generate(input: GenerateInput, options: GenerateOptions): Promise<GenerateResult>;
  generate(input: readonly GenerateInput[], options: GenerateOptions): Promise<GenerateResult[]>;
  async generate(input: GenerateInput | readonly GenerateInput[], options: GenerateOptions): Promise<GenerateResult | GenerateResult[]> {
    const caller = new Error();
    try {
      const req = this.#request(input, options, null);
      await new Promise<void>((resolve, reject) => {
        req.done = (err) => (err === undefined ? resolve() : reject(err));
        this.#submit(req);
      });
      const results = req.seqs.map((s) => ({
        text: s.text.text, tokens: [...s.text.tokens], finishReason: s.finishReason!, stats: statsOf(s, req.gamma),
      }));
      return Array.isArray(input) ? results : results[0]!;
    } catch (err) {
      throw withCallerStack(err, caller);
    }
  }

  /** Streams text and token deltas as they are accepted; the last chunk of each input has finishReason. */
  stream(input: GenerateInput | readonly GenerateInput[], options: GenerateOptions): AsyncIterable<StreamChunk> {
    const chunks: StreamChunk[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    let error: unknown;
    let req: Request | null = null;
    const start = () => {
      req = this.#request(input, options, (c) => {
        chunks.push(c);
        wake?.();
      });
      req.done = (err) => {
        finished = true;
        error = err;
        wake?.();
      };
      this.#submit(req);
    };
    return {
      [Symbol.asyncIterator]: () => {
        let started = false;
        return {
          next: async (): Promise<IteratorResult<StreamChunk>> => {
            if (!started) {
              started = true;
              start();
            }
            for (;;) {
              if (chunks.length > 0) return { value: chunks.shift()!, done: false };
              if (finished) {
                if (error !== undefined) throw error;
                return { value: undefined, done: true };
              }
              await new Promise<void>((r) => (wake = r));
              wake = null;
            }
          },
          return: async (): Promise<IteratorResult<StreamChunk>> => {
            // The consumer stopped early (break): end the generation.
            if (req && !finished) req.aborted = true;
            return { value: undefined, done: true };
          },
        };
      },
    };
  }

  /** Sequences queued or running. */
  get pending(): number {
    return this.#queue.length + this.#active.size;
  }

  /**
   * Ends every queued and running generation (finishReason 'aborted'), waits for the step
   * in flight, and frees the engine and the models the decoder loaded. Later calls throw E_STATE.
   */
  async dispose(): Promise<void> {
    if (this.#disposed) return this.#loop ?? undefined;
    this.#disposed = true;
    for (const s of [...this.#queue, ...this.#active.values()]) s.request.aborted = true;
    if (this.#loop) await this.#loop;
    this.#drainQueue();
    this.#engine?.dispose();
    this.#engine = null;
    for (const m of this.#owned) m.dispose();
  }

  [Symbol.dispose](): void {
    void this.dispose();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }

  #request(input: GenerateInput | readonly GenerateInput[], options: GenerateOptions, onChunk: Request['onChunk']): Request {
    if (this.#disposed) throw new SpeculaError('E_STATE', 'generate: the decoder has been disposed');
    const o = object('options', options);
    knownKeys('options', o, GEN_KEYS);
    if (!isIntegerIn(o.maxNewTokens, 1, 1 << 24)) {
      fail(typeof o.maxNewTokens === 'number' ? 'E_VALUE' : 'E_ARG', 'options.maxNewTokens', 'an integer in [1, 16777216]', o.maxNewTokens);
    }
    const target: Record<string, unknown> = { temperature: o.temperature };
    for (const k of ['topK', 'topP', 'minP'] as const) if (o[k] !== undefined) target[k] = o[k];
    const tp = packParams('options', target, 1);
    let draft: Record<string, unknown> = { ...target };
    if (o.draft !== undefined) {
      const d = object('options.draft', o.draft);
      knownKeys('options.draft', d, ['temperature', 'topK', 'topP', 'minP']);
      draft = { ...target, ...Object.fromEntries(Object.entries(d).filter(([, v]) => v !== undefined)) };
    }
    const dp = packParams('options.draft', draft, 1);
    const params = new Float64Array(8);
    params.set(tp, 0);
    params.set(dp, 4);
    const gamma = o.gamma ?? 4;
    if (!isIntegerIn(gamma, 0, 64)) fail(typeof gamma === 'number' ? 'E_VALUE' : 'E_ARG', 'options.gamma', 'an integer in [0, 64]', gamma);
    let stops: string[] = [];
    if (o.stop !== undefined) {
      if (!Array.isArray(o.stop)) fail('E_ARG', 'options.stop', 'an Array of non-empty strings', o.stop);
      stops = (o.stop as unknown[]).map((s, i) => {
        if (typeof s !== 'string' || s === '') fail('E_VALUE', `options.stop[${i}]`, 'a non-empty string', s);
        return s;
      });
    }
    const signal = o.signal as AbortSignal | undefined;
    if (signal !== undefined && !(signal instanceof AbortSignal)) fail('E_ARG', 'options.signal', 'an AbortSignal', signal);
    if (o.ignoreEos !== undefined && typeof o.ignoreEos !== 'boolean') fail('E_ARG', 'options.ignoreEos', 'a boolean', o.ignoreEos);
    if (o.onStep !== undefined && typeof o.onStep !== 'function') fail('E_ARG', 'options.onStep', 'a function', o.onStep);

    const list: readonly GenerateInput[] = Array.isArray(input) ? input : [input as GenerateInput];
    if (Array.isArray(input) && list.length === 0) fail('E_ARG', 'input', 'a non-empty Array of inputs', input);
    let seeds: bigint[];
    if (Array.isArray(o.seed)) {
      if (o.seed.length !== list.length) fail('E_SHAPE', 'options.seed', `one seed per input (${list.length})`, o.seed);
      seeds = (o.seed as unknown[]).map((s, i) => seedValue(`options.seed[${i}]`, s));
    } else {
      const base = o.seed === undefined ? randomBytes(8).readBigUInt64LE() : seedValue('options.seed', o.seed);
      seeds = list.map((_, i) => sequenceSeed(base, i));
    }
    const tok = this.target.tokenizer;
    const vocab = this.target.vocabSize;
    const prompts = list.map((x, i) => {
      const name = Array.isArray(input) ? `input[${i}]` : 'input';
      let ids: Int32Array;
      if (typeof x === 'string') {
        ids = tok.encode(x);
      } else if (typeof x === 'object' && x !== null && Array.isArray((x as { tokens?: unknown }).tokens)) {
        knownKeys(name, x as Record<string, unknown>, ['tokens']);
        const t = (x as { tokens: unknown[] }).tokens;
        ids = new Int32Array(t.length);
        t.forEach((v, j) => {
          if (!isIntegerIn(v, 0, vocab - 1)) fail('E_VALUE', `${name}.tokens[${j}]`, `a token id in [0, ${vocab - 1}]`, v);
          ids[j] = v;
        });
      } else {
        return fail('E_ARG', name, 'a string or { tokens: number[] }', x);
      }
      if (ids.length === 0) fail('E_SHAPE', name, 'a prompt of at least one token', x);
      if (ids.length >= this.contextLength) {
        throw new SpeculaError('E_SHAPE', `${name}: the prompt has ${ids.length} tokens, which leaves no room to generate in a context of ${this.contextLength} tokens (at most ${this.contextLength - 1})`);
      }
      return ids;
    });
    const req: Request = {
      params, gamma, maxNewTokens: o.maxNewTokens as number, eos: o.ignoreEos === true ? new Int32Array(0) : Int32Array.from(tok.eosTokenIds), stops, signal,
      onStep: o.onStep as Request['onStep'], aborted: false, seqs: [], open: list.length, failed: undefined,
      onChunk, done: () => {}, detach: () => {},
    };
    req.seqs = prompts.map((prompt, index) => ({
      index, prompt, seed: seeds[index]!, request: req, slot: -1, text: new TextState(tok, stops), sent: 0, sentTokens: 0,
      finishReason: null, start: 0, end: 0, targetCalls: 0, draftCalls: 0, drafted: 0, accepted: 0, emitted: 0,
      tested: 0, expectedSum: 0, draftingSteps: 0, acceptedAt: new Array<number>(gamma).fill(0),
      prefillMs: 0, draftMs: 0, targetMs: 0, samplingMs: 0,
    }));
    return req;
  }

  #submit(req: Request): void {
    if (this.#disposed) {
      req.done(new SpeculaError('E_STATE', 'generate: the decoder has been disposed'));
      return;
    }
    if (req.signal) {
      const onAbort = () => {
        req.aborted = true;
        // Queued sequences end now; running ones at the next step boundary.
        this.#drainQueue();
      };
      if (req.signal.aborted) req.aborted = true;
      else req.signal.addEventListener('abort', onAbort, { once: true });
      req.detach = () => req.signal?.removeEventListener('abort', onAbort);
    }
    this.#queue.push(...req.seqs);
    this.#drainQueue();
    this.#loop ??= this.#run().finally(() => {
      this.#loop = null;
    });
  }

  /** Ends queued sequences whose request was aborted. */
  #drainQueue(): void {
    for (let i = 0; i < this.#queue.length; ) {
      const s = this.#queue[i]!;
      if (s.request.aborted || this.#disposed) {
        this.#queue.splice(i, 1);
        this.#finish(s, 'aborted');
      } else {
        ++i;
      }
    }
  }

  async #run(): Promise<void> {
    const engine = this.#engine!;
    for (;;) {
      // Leave: aborted sequences. Join: queued sequences, while slots are free.
      for (const s of [...this.#active.values()]) {
        if (s.request.aborted) this.#retire(s, 'aborted');
      }
      this.#drainQueue();
      while (this.#queue.length > 0 && this.#active.size < this.maxBatch) {
        const s = this.#queue.shift()!;
        const r = s.request;
        try {
          s.slot = engine.add(s.prompt, r.params, r.gamma, s.seed, r.maxNewTokens, r.eos);
        } catch (err) {
          this.#fail(r, err);
          continue;
        }
        this.#active.set(s.slot, s);
      }
      if (this.#active.size === 0) {
        if (this.#queue.length === 0) return;
        continue;
      }
      let res: NativeStepResult;
      const t0 = performance.now();
      try {
        res = await engine.step();
      } catch (err) {
        for (const s of [...this.#active.values()]) {
          this.#active.delete(s.slot);
          engine.remove(s.slot);
          this.#fail(s.request, err);
        }
        continue;
      }
      const t1 = performance.now();
      this.#absorb(res, t0, t1);
    }
  }

  #absorb(res: NativeStepResult, t0: number, t1: number): void {
    const [prefill, draft, target, sampling, , draftCalls] = res.times as unknown as number[];
    for (let b = 0; b < res.slots.length; ++b) {
      const s = this.#active.get(res.slots[b]!);
      if (!s) continue;
      const r = s.request;
      if (s.targetCalls === 0) {
        s.start = t0;
        s.prefillMs += prefill!;
      }
      s.end = t1;
      const L = res.drafted[b]!, k = res.accepted[b]!;
      s.targetCalls += 1;
      s.targetMs += target!;
      s.samplingMs += sampling!;
      if (L > 0) {
        s.draftCalls += L;
        s.draftMs += draftCalls! > 0 ? (draft! * L) / draftCalls! : 0;
        s.draftingSteps += 1;
        for (let i = 0; i < k; ++i) s.acceptedAt[i]! += 1;
      }
      s.drafted += L;
      s.accepted += k;
      s.emitted += k + 1;
      for (let j = res.expectedOffsets[b]!; j < res.expectedOffsets[b + 1]!; ++j) s.expectedSum += res.expected[j]!;
      s.tested += res.expectedOffsets[b + 1]! - res.expectedOffsets[b]!;
      // Keep the tokens (up to an EOS: native; up to a stop string: here).
      const kept = res.kept[b]!, e0 = res.emittedOffsets[b]!;
      const finish = res.finish[b]!;
      let stopped = false;
      for (let j = 0; j < kept && !stopped; ++j) {
        const isEos = finish === 2 && j === kept - 1;
        stopped = !s.text.push(res.emitted[e0 + j]!, isEos);
      }
      let reason: FinishReason | null = stopped ? 'stop' : finish === 2 ? 'eos' : finish === 1 ? 'length' : null;
      if (reason !== null && reason !== 'stop' && !s.text.flush()) reason = 'stop';
      if (reason === null && r.aborted) reason = 'aborted';
      if (r.onStep) {
        try {
          r.onStep({ ...statsOf(s, r.gamma), index: s.index, generated: s.text.tokens.length });
        } catch (err) {
          this.#active.delete(s.slot);
          this.#engine!.remove(s.slot);
          this.#fail(r, err);
          continue;
        }
      }
      if (reason !== null) this.#retire(s, reason);
      else this.#emit(s, false);
    }
  }

  /** Streams what is new for s. */
  #emit(s: Sequence, final: boolean): void {
    const r = s.request;
    if (!r.onChunk || r.failed !== undefined) return;
    const upto = s.text.stableLength(final);
    const text = upto > s.sent ? s.text.text.slice(s.sent, upto) : '';
    const tokens = s.text.tokens.slice(s.sentTokens);
    if (!final && text === '' && tokens.length === 0) return;
    s.sent = Math.max(s.sent, upto);
    s.sentTokens = s.text.tokens.length;
    const chunk: StreamChunk = { index: s.index, text, tokens, stats: statsOf(s, r.gamma) };
    if (final) chunk.finishReason = s.finishReason!;
    r.onChunk(chunk);
  }

  /** Removes a running sequence from the engine and finishes it. */
  #retire(s: Sequence, reason: FinishReason): void {
    this.#active.delete(s.slot);
    this.#engine!.remove(s.slot);
    if (reason === 'aborted') s.text.flush();
    this.#finish(s, reason);
  }

  #finish(s: Sequence, reason: FinishReason): void {
    const r = s.request;
    s.finishReason = reason;
    if (r.failed !== undefined) return;
    this.#emit(s, true);
    if (--r.open === 0) {
      r.detach();
      r.done(undefined);
    }
  }

  #fail(r: Request, err: unknown): void {
    if (r.failed !== undefined) return;
    r.failed = err ?? new Error('unknown error');
    r.aborted = true;
    // Its other sequences leave at the next boundary (or now, if queued).
    for (const s of r.seqs) {
      if (this.#active.get(s.slot) === s) {
        this.#active.delete(s.slot);
        this.#engine!.remove(s.slot);
      }
    }
    for (let i = this.#queue.length - 1; i >= 0; --i) if (this.#queue[i]!.request === r) this.#queue.splice(i, 1);
    r.detach();
    r.done(r.failed);
  }
}

