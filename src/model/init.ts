/**
 * initModel: writes a random-initialised model directory that this runtime and Hugging
 * Face transformers both load: config.json, model.safetensors (Hugging Face tensor names,
 * "format": "pt" metadata), and a byte-level tokenizer.json + tokenizer_config.json.
 */
import { mkdir, open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SpeculaError, withCallerStack } from '../errors.js';
import { describe, fail, isIntegerIn, knownKeys, object } from '../validate.js';
import { ARCHITECTURES, parseConfig, type LlamaConfig } from './config.js';
import { byteTokenizerJson } from './tokenizer.js';
import { safetensorsHeader } from './safetensors.js';

export type WeightDType = 'f32' | 'f16' | 'bf16';

/** Named configurations for initModel. */
export const PRESETS = {
  /** 2 layers, hidden 64, GQA 4/2 heads: tests and the demo. */
  tiny: {
    architecture: 'LlamaForCausalLM', vocabSize: 320, hiddenSize: 64, intermediateSize: 128, numLayers: 2,
    numHeads: 4, numKvHeads: 2, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
    maxPositionEmbeddings: 512, tieWordEmbeddings: false, qkvBias: false, oBias: false,
  },
  /** tiny with Qwen2's q/k/v biases and tied embeddings. */
  'qwen2-tiny': {
    architecture: 'Qwen2ForCausalLM', vocabSize: 320, hiddenSize: 64, intermediateSize: 128, numLayers: 2,
    numHeads: 4, numKvHeads: 2, headDim: 16, rmsNormEps: 1e-6, ropeTheta: 1000000, ropeScaling: null,
    maxPositionEmbeddings: 512, tieWordEmbeddings: true, qkvBias: true, oBias: false,
  },
  /** tiny as Mistral, 8 query heads on 2 kv heads. */
  'mistral-tiny': {
    architecture: 'MistralForCausalLM', vocabSize: 320, hiddenSize: 64, intermediateSize: 160, numLayers: 2,
    numHeads: 8, numKvHeads: 2, headDim: 8, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
    maxPositionEmbeddings: 512, tieWordEmbeddings: false, qkvBias: false, oBias: false,
  },
  /** tiny with Llama 3's rope_scaling (theta 500000, factor 8 over 64 original positions). */
  'llama3-tiny': {
    architecture: 'LlamaForCausalLM', vocabSize: 320, hiddenSize: 64, intermediateSize: 128, numLayers: 2,
    numHeads: 4, numKvHeads: 1, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 500000,
    ropeScaling: { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    maxPositionEmbeddings: 512, tieWordEmbeddings: true, qkvBias: false, oBias: false,
  },
  /** ~100M parameters (hidden 768, 12 layers, 12/4 heads, vocab 32000, tied): the benchmarks. */
  'llama-100m': {
    architecture: 'LlamaForCausalLM', vocabSize: 32000, hiddenSize: 768, intermediateSize: 2048, numLayers: 12,
    numHeads: 12, numKvHeads: 4, headDim: 64, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
    maxPositionEmbeddings: 2048, tieWordEmbeddings: true, qkvBias: false, oBias: false,
  },
  /** ~5M parameters (hidden 128, 4 layers, vocab 32000, tied): the draft of the engine benchmark. */
  'llama-5m': {
    architecture: 'LlamaForCausalLM', vocabSize: 32000, hiddenSize: 128, intermediateSize: 384, numLayers: 4,
    numHeads: 4, numKvHeads: 2, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null,
    maxPositionEmbeddings: 2048, tieWordEmbeddings: true, qkvBias: false, oBias: false,
  },
} as const satisfies Record<string, ModelShape>;

export type PresetName = keyof typeof PRESETS;

/** The part of LlamaConfig that initModel takes (token ids come from the tokenizer). */
export type ModelShape = Omit<LlamaConfig, 'bosTokenId' | 'eosTokenIds' | 'padTokenId'>;

export interface InitModelOptions {
  /** A preset name, or fields over the `tiny` preset. */
  config: PresetName | Partial<ModelShape>;
  /** Seed of the weights (a non-negative safe integer): the same seed writes the same bytes. */
  seed: number;
  /** Storage type of every tensor. Default 'f32'. */
  dtype?: WeightDType;
  /** Only 'byte' (ids 0-255 bytes, 256 <s>, 257 </s>). */
  tokenizer?: 'byte';
  /**
   * Standard deviation of the weight matrices and biases (normal, mean 0). Default 0.02,
   * Hugging Face's initializer_range. RMSNorm weights are 1 + 0.1 N(0, 1).
   */
  initStd?: number;
}

const SHAPE_KEYS = Object.keys(PRESETS.tiny) as (keyof ModelShape)[];

const MODEL_TYPE: Record<LlamaConfig['architecture'], string> = {
  LlamaForCausalLM: 'llama', MistralForCausalLM: 'mistral', Qwen2ForCausalLM: 'qwen2',
};

/** config.json (Hugging Face field names) for a shape and token ids. */
export function hfConfig(s: ModelShape, bos: number, eos: number, dtype: WeightDType): Record<string, unknown> {
  const c: Record<string, unknown> = {
    architectures: [s.architecture],
    model_type: MODEL_TYPE[s.architecture],
    vocab_size: s.vocabSize,
    hidden_size: s.hiddenSize,
    intermediate_size: s.intermediateSize,
    num_hidden_layers: s.numLayers,
    num_attention_heads: s.numHeads,
    num_key_value_heads: s.numKvHeads,
    head_dim: s.headDim,
    hidden_act: 'silu',
    max_position_embeddings: s.maxPositionEmbeddings,
    rms_norm_eps: s.rmsNormEps,
    rope_theta: s.ropeTheta,
    rope_scaling: s.ropeScaling
      ? {
          rope_type: 'llama3', factor: s.ropeScaling.factor, low_freq_factor: s.ropeScaling.lowFreqFactor,
          high_freq_factor: s.ropeScaling.highFreqFactor,
          original_max_position_embeddings: s.ropeScaling.originalMaxPositionEmbeddings,
        }
      : null,
    tie_word_embeddings: s.tieWordEmbeddings,
    initializer_range: 0.02,
    attention_dropout: 0.0,
    use_cache: true,
    bos_token_id: bos,
    eos_token_id: eos,
    torch_dtype: dtype === 'f32' ? 'float32' : dtype === 'f16' ? 'float16' : 'bfloat16',
  };
  if (s.architecture === 'LlamaForCausalLM') {
    c.attention_bias = s.qkvBias;
    c.mlp_bias = false;
  } else if (s.architecture === 'MistralForCausalLM') {
    c.sliding_window = null;
  } else {
    c.use_sliding_window = false;
    c.sliding_window = null;
  }
  return c;
}

/** A seeded generator of normal deviates (mulberry32 uniforms, Box-Muller). */
class Normals {
  #s: number;
  #spare: number | null = null;
  constructor(seed: number) {
    // Fold the 53-bit seed into 32 bits of state.
    this.#s = (seed ^ Math.floor(seed / 4294967296) * 0x9e3779b1) >>> 0;
  }
  #u32(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  next(): number {
    if (this.#spare !== null) {
      const v = this.#spare;
      this.#spare = null;
      return v;
    }
    const u1 = (this.#u32() + 0.5) / 4294967296, u2 = this.#u32() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    this.#spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even. */
export function toBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** number -> IEEE half bits, round to nearest even (overflow to infinity). */
export function toF16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let man = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    man |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = man & ((1 << shift) - 1);
    let h = man >>> shift;
    if (rest > half || (rest === half && (h & 1))) h += 1;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rest = man & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h += 1;  // may carry into the exponent: still correct
  return sign | h;
}

interface TensorPlan {
  name: string;
  shape: number[];
  kind: 'matrix' | 'norm' | 'bias';
}

function plan(s: ModelShape): TensorPlan[] {
  const H = s.hiddenSize, I = s.intermediateSize, qd = s.numHeads * s.headDim, kvd = s.numKvHeads * s.headDim;
  const out: TensorPlan[] = [{ name: 'model.embed_tokens.weight', shape: [s.vocabSize, H], kind: 'matrix' }];
  for (let l = 0; l < s.numLayers; ++l) {
    const p = `model.layers.${l}.`;
    out.push(
      { name: `${p}input_layernorm.weight`, shape: [H], kind: 'norm' },
      { name: `${p}self_attn.q_proj.weight`, shape: [qd, H], kind: 'matrix' },
      { name: `${p}self_attn.k_proj.weight`, shape: [kvd, H], kind: 'matrix' },
      { name: `${p}self_attn.v_proj.weight`, shape: [kvd, H], kind: 'matrix' },
    );
    if (s.qkvBias) {
      out.push(
        { name: `${p}self_attn.q_proj.bias`, shape: [qd], kind: 'bias' },
        { name: `${p}self_attn.k_proj.bias`, shape: [kvd], kind: 'bias' },
        { name: `${p}self_attn.v_proj.bias`, shape: [kvd], kind: 'bias' },
      );
    }
    out.push({ name: `${p}self_attn.o_proj.weight`, shape: [H, qd], kind: 'matrix' });
    if (s.oBias) out.push({ name: `${p}self_attn.o_proj.bias`, shape: [H], kind: 'bias' });
    out.push(
      { name: `${p}post_attention_layernorm.weight`, shape: [H], kind: 'norm' },
      { name: `${p}mlp.gate_proj.weight`, shape: [I, H], kind: 'matrix' },
      { name: `${p}mlp.up_proj.weight`, shape: [I, H], kind: 'matrix' },
      { name: `${p}mlp.down_proj.weight`, shape: [H, I], kind: 'matrix' },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });
  if (!s.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [s.vocabSize, H], kind: 'matrix' });
  return out;
}

function resolveShape(config: unknown): ModelShape {
  if (typeof config === 'string') {
    if (!(config in PRESETS)) fail('E_VALUE', 'config', `a preset name (${Object.keys(PRESETS).join(', ')})`, config);
    return { ...PRESETS[config as PresetName] };
  }
  const o = object('config', config);
  knownKeys('config', o, SHAPE_KEYS);
  return { ...PRESETS.tiny, ...(o as Partial<ModelShape>) } as ModelShape;
}

/** Writes a random model directory (created if needed; its model files are replaced). */
export async function initModel(dir: string, opts: InitModelOptions): Promise<void> {
  const caller = new Error();
  try {
    if (typeof dir !== 'string' || dir === '') fail('E_ARG', 'dir', 'a directory path', dir);
    const o = object('opts', opts);
    knownKeys('opts', o, ['config', 'seed', 'dtype', 'tokenizer', 'initStd']);
    if (!isIntegerIn(o.seed, 0)) fail('E_VALUE', 'seed', 'a non-negative safe integer', o.seed);
    const dtype = (o.dtype ?? 'f32') as WeightDType;
    if (!['f32', 'f16', 'bf16'].includes(dtype)) fail('E_VALUE', 'dtype', "'f32', 'f16' or 'bf16'", o.dtype);
    if ((o.tokenizer ?? 'byte') !== 'byte') fail('E_VALUE', 'tokenizer', "'byte'", o.tokenizer);
    const std = (o.initStd ?? 0.02) as number;
    if (typeof std !== 'number' || !(std >= 0 && std <= 10)) fail('E_VALUE', 'initStd', 'a number in [0, 10]', o.initStd);
    const shape = resolveShape(o.config);
    if (!(ARCHITECTURES as readonly string[]).includes(shape.architecture)) {
      fail('E_VALUE', 'config.architecture', ARCHITECTURES.join(' | '), shape.architecture);
    }
    const tok = byteTokenizerJson();
    if (!isIntegerIn(shape.vocabSize, tok.eos + 1)) {
      fail('E_VALUE', 'config.vocabSize', `an integer >= ${tok.eos + 1} (the byte tokenizer's ids)`, shape.vocabSize);
    }
    const config = hfConfig(shape, tok.bos, tok.eos, dtype);
    // The written config must read back as the shape asked for (catches combinations
    // config.json cannot express, e.g. Llama with q/k/v bias but no o bias).
    const back = parseConfig(config, 'config');
    for (const k of SHAPE_KEYS) {
      if (JSON.stringify(back[k]) !== JSON.stringify(shape[k])) {
        throw new SpeculaError('E_VALUE', `config.${k}: ${describe(shape[k])} cannot be written as a ${shape.architecture} config.json (it reads back as ${describe(back[k])})`);
      }
    }
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    await writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify(tok.json));
    await writeFile(path.join(dir, 'tokenizer_config.json'), `${JSON.stringify(tok.config, null, 2)}\n`);
    await writeSafetensors(path.join(dir, 'model.safetensors'), shape, dtype, o.seed as number, std);
  } catch (err) {
    throw withCallerStack(err, caller);
  }
}

async function writeSafetensors(file: string, s: ModelShape, dtype: WeightDType, seed: number, std: number): Promise<void> {
  const es = dtype === 'f32' ? 4 : 2;
  const all = plan(s);
  const { head, order } = safetensorsHeader(all, dtype);
  const tensors = order.map((i) => all[i]!);
  const bytesOf = (t: TensorPlan) => t.shape.reduce((a, b) => a * b, 1) * es;
  const fh = await open(file, 'w');
  try {
    await fh.write(head);
    const rng = new Normals(seed);
    const chunk = 1 << 20;
    for (const t of tensors) {
      const n = bytesOf(t) / es;
      for (let i0 = 0; i0 < n; i0 += chunk) {
        const m = Math.min(chunk, n - i0);
        const buf = Buffer.alloc(m * es);
        for (let i = 0; i < m; ++i) {
          const z = rng.next();
          const v = t.kind === 'norm' ? 1 + 0.1 * z : std * z;
          if (dtype === 'f32') buf.writeFloatLE(v, i * 4);
          else buf.writeUInt16LE(dtype === 'bf16' ? toBf16(v) : toF16(v), i * 2);
        }
        await fh.write(buf);
      }
    }
  } finally {
    await fh.close();
  }
}
