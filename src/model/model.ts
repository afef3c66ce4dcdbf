/**
 * loadModel / Model / KvCache: Llama-family models from Hugging Face directories, run by
 * the native CPU runtime (native/core/model.h). Headers and config are validated here;
 * weights are memory-mapped by the core and stay in their stored dtype.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { SpeculaError, withCallerStack } from '../errors.js';
import { native, type NativeCache, type NativeModel, type NativeModelConfig, type NativeTensor } from '../native.js';
import { setThreads } from '../runtime.js';
import { describe, fail, isIntegerIn, knownKeys, object } from '../validate.js';
import { parseConfig, type LlamaConfig } from './config.js';
import { readSafetensors, type SafetensorsFile } from './safetensors.js';
import { Tokenizer } from './tokenizer.js';

export interface LoadModelOptions {
  /** Size of the process-wide compute pool (as setThreads); default: leave it as it is. */
  threads?: number;
  /** Longest sequence (tokens) this model will run; default config.max_position_embeddings. */
  contextLength?: number;
}

export interface CacheOptions {
  /** Sequences the cache holds (>= 1). */
  sequences: number;
  /** Positions per sequence (1 .. model.contextLength). */
  capacity: number;
}

/**
 * One sequence's part of a KvCache.forward call: `tokens` (>= 1) are appended at the
 * sequence's current length. `logits` says for which of them logits come back: 'last'
 * (default; drafting), 'all' (verification), 'none' (prefill), or a count k meaning the
 * last k.
 */
export interface ForwardItem {
  seq: number;
  tokens: Int32Array | readonly number[];
  logits?: 'all' | 'last' | 'none' | number;
}

function readJson(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SpeculaError('E_IO', `${file}: cannot read ${what} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SpeculaError('E_FORMAT', `${file}: ${what} is not valid JSON (${(err as Error).message})`);
  }
}

/** The safetensors files of a model directory and every tensor in them. */
export function readWeights(dir: string): { files: SafetensorsFile[]; tensors: NativeTensor[] } {
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const single = path.join(dir, 'model.safetensors');
  let names: string[];
  let weightMap: Record<string, string> | null = null;
  if (existsSync(indexFile)) {
    const index = readJson(indexFile, 'the shard index');
    const map = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map)) {
      throw new SpeculaError('E_FORMAT', `${indexFile}: expected an object "weight_map" of tensor name -> file`);
    }
    weightMap = map as Record<string, string>;
    const set = new Set<string>();
    for (const [tensor, f] of Object.entries(weightMap)) {
      if (typeof f !== 'string' || f === '' || f.includes('/') || f.includes('\\') || f === '..' || f === '.') {
        throw new SpeculaError('E_FORMAT', `${indexFile}: weight_map[${JSON.stringify(tensor)}]: expected a file name in the directory, found ${describe(f)}`);
      }
      set.add(f);
    }
    names = [...set].sort();
    if (names.length === 0) throw new SpeculaError('E_FORMAT', `${indexFile}: weight_map names no tensor`);
    for (const f of names) {
      if (!existsSync(path.join(dir, f))) {
        throw new SpeculaError('E_IO', `${indexFile}: names ${f}, which is missing from ${dir}`);
      }
    }
  } else if (existsSync(single)) {
    names = ['model.safetensors'];
  } else {
    throw new SpeculaError('E_IO', `${dir}: no model.safetensors or model.safetensors.index.json`);
  }
  const files = names.map((n) => readSafetensors(path.join(dir, n)));
  const tensors: NativeTensor[] = [];
  files.forEach((f, i) => {
    for (const t of f.tensors.values()) tensors.push([t.name, i, t.offset, t.bytes, t.dtype, t.shape]);
  });
  if (weightMap) {
    for (const [tensor, f] of Object.entries(weightMap)) {
      const file = files[names.indexOf(f)]!;
      if (!file.tensors.has(tensor)) {
        throw new SpeculaError('E_FORMAT', `${indexFile}: tensor ${JSON.stringify(tensor)} should be in ${f}, which does not hold it`);
      }
    }
  }
  return { files, tensors };
}

function nativeConfig(c: LlamaConfig, context: number): NativeModelConfig {
  return {
    vocab: c.vocabSize, hidden: c.hiddenSize, intermediate: c.intermediateSize, layers: c.numLayers,
    heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim, context, rmsEps: c.rmsNormEps,
    ropeTheta: c.ropeTheta, ropeLlama3: c.ropeScaling !== null,
    ...(c.ropeScaling
      ? {
          ropeFactor: c.ropeScaling.factor, ropeLowFreq: c.ropeScaling.lowFreqFactor,
          ropeHighFreq: c.ropeScaling.highFreqFactor, ropeOriginalMax: c.ropeScaling.originalMaxPositionEmbeddings,
        }
      : {}),
    tieEmbeddings: c.tieWordEmbeddings, qkvBias: c.qkvBias, oBias: c.oBias,
  };
}

/** Loads a Llama / Mistral / Qwen2 model directory (see the README for what it holds). */
export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<Model> {
  const caller = new Error();
  try {
    if (typeof dir !== 'string' || dir === '') fail('E_ARG', 'dir', 'a directory path', dir);
    knownKeys('opts', object('opts', opts), ['threads', 'contextLength']);
    let st;
    try {
      st = statSync(dir);
    } catch {
      throw new SpeculaError('E_IO', `${dir}: no such directory`);
    }
    if (!st.isDirectory()) throw new SpeculaError('E_IO', `${dir}: not a directory`);
    if (opts.threads !== undefined) setThreads(opts.threads);
    const configFile = path.join(dir, 'config.json');
    const raw = readJson(configFile, 'config.json');
    if (opts.contextLength !== undefined && !isIntegerIn(opts.contextLength, 1, 1 << 24)) {
      fail('E_VALUE', 'contextLength', 'an integer in [1, 16777216]', opts.contextLength);
    }
    const config = parseConfig(raw, configFile, opts.contextLength);
    const context = opts.contextLength ?? config.maxPositionEmbeddings;
    if (context > config.maxPositionEmbeddings) {
      fail('E_VALUE', 'contextLength', `at most max_position_embeddings (${config.maxPositionEmbeddings})`, context);
    }
    const tokFile = path.join(dir, 'tokenizer.json');
    if (!existsSync(tokFile)) throw new SpeculaError('E_IO', `${dir}: no tokenizer.json`);
    const tokJson = readJson(tokFile, 'tokenizer.json');
    const tokConfigFile = path.join(dir, 'tokenizer_config.json');
    const tokConfig = existsSync(tokConfigFile) ? readJson(tokConfigFile, 'tokenizer_config.json') : {};
    if (typeof tokConfig !== 'object' || tokConfig === null || Array.isArray(tokConfig)) {
      throw new SpeculaError('E_FORMAT', `${tokConfigFile}: expected a JSON object`);
    }
    const tokenizer = new Tokenizer(tokJson, tokConfig as Record<string, unknown>, {
      bosTokenId: config.bosTokenId, eosTokenIds: config.eosTokenIds, padTokenId: config.padTokenId,
    }, tokFile);
    const { files, tensors } = readWeights(dir);
    const handle = await native().loadModel(nativeConfig(config, context), files.map((f) => f.file), tensors);
    return new Model(path.resolve(dir), config, context, tokenizer, handle);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

/** A loaded model. Owns mapped memory: dispose() it (or use `using`) when done. */
export class Model {
  readonly dir: string;
  readonly config: LlamaConfig;
  readonly vocabSize: number;
  /** Longest sequence this model runs (LoadModelOptions.contextLength). */
  readonly contextLength: number;
  readonly tokenizer: Tokenizer;
  /** Bytes of weights one decode step reads (every layer matrix and the output projection). */
  readonly weightBytesPerToken: number;
  #handle: NativeModel | null;

  /** @internal use loadModel */
  constructor(dir: string, config: LlamaConfig, contextLength: number, tokenizer: Tokenizer, handle: NativeModel) {
    this.dir = dir;
    this.config = config;
    this.vocabSize = config.vocabSize;
    this.contextLength = contextLength;
    this.tokenizer = tokenizer;
    this.#handle = handle;
    this.weightBytesPerToken = handle.info().weightBytesPerToken;
  }

  #live(what: string): NativeModel {
    if (!this.#handle) throw new SpeculaError('E_STATE', `${what}: the model has been disposed`);
    return this.#handle;
  }

  /** @internal the native handle, for the engine (E_STATE once disposed). */
  static handle(model: Model, what: string): NativeModel {
    return model.#live(what);
  }

  /** Logits of every position of one sequence, [tokens.length, vocabSize], without a cache. */
  async logits(tokens: Int32Array | readonly number[]): Promise<Float32Array> {
    const caller = new Error();
    this.#live('logits');
    const ids = tokenArray('tokens', tokens, this.vocabSize);
    if (ids.length === 0) fail('E_SHAPE', 'tokens', 'at least one token', tokens);
    if (ids.length > this.contextLength) {
      throw withCallerStack(new SpeculaError('E_SHAPE', `tokens: ${ids.length} tokens exceed the context length ${this.contextLength}`), caller);
    }
    const cache = this.createCache({ sequences: 1, capacity: ids.length });
    try {
      return await cache.forward([{ seq: 0, tokens: ids, logits: 'all' }]);
    } finally {
      cache.dispose();
    }
  }

  /** A KV cache for the speculative loop (see KvCache). */
  createCache(opts: CacheOptions): KvCache {
    const o = object('opts', opts);
    knownKeys('opts', o, ['sequences', 'capacity']);
    if (!isIntegerIn(o.sequences, 1, 65536)) fail('E_VALUE', 'sequences', 'an integer in [1, 65536]', o.sequences);
    if (!isIntegerIn(o.capacity, 1, this.contextLength)) {
      fail('E_VALUE', 'capacity', `an integer in [1, ${this.contextLength}] (the context length)`, o.capacity);
    }
    const b = native();
    return new KvCache(new b.NativeCache(this.#live('createCache'), o.sequences as number, o.capacity as number),
      o.sequences as number, o.capacity as number, this.vocabSize);
  }

  /** Releases the model's handle; caches made from it keep working until they are disposed. */
  dispose(): void {
    this.#handle?.dispose();
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function tokenArray(name: string, v: unknown, vocab: number): Int32Array {
  if (v instanceof Int32Array) return v;
  if (!Array.isArray(v)) fail('E_ARG', name, 'an Int32Array or an Array of token ids', v);
  const out = new Int32Array(v.length);
  for (let i = 0; i < v.length; ++i) {
    const t = v[i];
    if (!isIntegerIn(t, 0, vocab - 1)) fail('E_VALUE', `${name}[${i}]`, `a token id in [0, ${vocab - 1}]`, t);
    out[i] = t as number;
  }
  return out;
}

/**
 * KV cache for up to `sequences` sequences of `capacity` positions, for the speculative
 * loop: each step makes one forward call for all sequences' draft tokens (logits 'last')
 * and one for verification (logits 'all'), then truncate()s every sequence to its
 * accepted length in O(1). One forward at a time per cache; the others throw E_STATE.
 */
export class KvCache {
  readonly sequences: number;
  readonly capacity: number;
  readonly vocabSize: number;
  #native: NativeCache | null;

  /** @internal use Model.createCache */
  constructor(handle: NativeCache, sequences: number, capacity: number, vocabSize: number) {
    this.#native = handle;
    this.sequences = sequences;
    this.capacity = capacity;
    this.vocabSize = vocabSize;
  }

  #live(what: string): NativeCache {
    if (!this.#native) throw new SpeculaError('E_STATE', `${what}: the cache has been disposed`);
    return this.#native;
  }

  #seq(name: string, seq: unknown): number {
    if (!isIntegerIn(seq, 0, this.sequences - 1)) fail('E_VALUE', name, `a sequence index in [0, ${this.sequences - 1}]`, seq);
    return seq as number;
  }

  /** Tokens held for sequence seq. */
  length(seq: number): number {
    return this.#live('length').length(this.#seq('seq', seq));
  }

  /** Keeps the first `length` positions of sequence seq (length <= its current length). */
  truncate(seq: number, length: number): void {
    const h = this.#live('truncate');
    const s = this.#seq('seq', seq);
    if (!isIntegerIn(length, 0, this.capacity)) fail('E_VALUE', 'length', `an integer in [0, ${this.capacity}]`, length);
    h.truncate(s, length);
  }

  /** Empties every sequence. */
  reset(): void {
    this.#live('reset').reset();
  }

  /** Bytes of key/value memory. */
  get bytes(): number {
    return this.#live('bytes').bytes();
  }

  /**
   * Appends each item's tokens to its sequence and returns the requested logits,
   * [rows, vocabSize] float32: items in order, each item's rows in position order.
   * `out` (optional) receives them instead of a new array. Items must name distinct
   * sequences. On an error nothing changes.
   */
  async forward(items: readonly ForwardItem[], opts: { out?: Float32Array } = {}): Promise<Float32Array> {
    const caller = new Error();
    try {
      const h = this.#live('forward');
      if (!Array.isArray(items) || items.length === 0) fail('E_ARG', 'items', 'a non-empty Array of ForwardItem', items);
      const B = items.length;
      const seqs = new Int32Array(B), counts = new Int32Array(B), nLogits = new Int32Array(B);
      const lists: Int32Array[] = [];
      let total = 0, rows = 0;
      for (let i = 0; i < B; ++i) {
        const it = object(`items[${i}]`, items[i]);
        knownKeys(`items[${i}]`, it, ['seq', 'tokens', 'logits']);
        seqs[i] = this.#seq(`items[${i}].seq`, it.seq);
        const toks = tokenArray(`items[${i}].tokens`, it.tokens, this.vocabSize);
        if (toks.length === 0) fail('E_SHAPE', `items[${i}].tokens`, 'at least one token', it.tokens);
        const want = it.logits ?? 'last';
        const k = want === 'all' ? toks.length : want === 'last' ? 1 : want === 'none' ? 0 : want;
        if (!isIntegerIn(k, 0, toks.length)) {
          fail('E_VALUE', `items[${i}].logits`, `'all', 'last', 'none' or a count in [0, ${toks.length}]`, want);
        }
        counts[i] = toks.length;
        nLogits[i] = k as number;
        lists.push(toks);
        total += toks.length;
        rows += k as number;
      }
      const tokens = new Int32Array(total);
      let off = 0;
      for (const l of lists) {
        tokens.set(l, off);
        off += l.length;
      }
      let out = opts.out;
      if (out === undefined) {
        out = new Float32Array(rows * this.vocabSize);
      } else if (!(out instanceof Float32Array) || out.length !== rows * this.vocabSize) {
        fail('E_SHAPE', 'opts.out', `a Float32Array of length ${rows * this.vocabSize} (${rows} rows x ${this.vocabSize})`, out);
      }
      await h.forward(seqs, counts, nLogits, tokens, out, true);
      return out;
    } catch (err) {
      throw withCallerStack(err, caller);
    }
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
