/**
 * Reference forward pass of Hugging Face Llama-family decoders (LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM), written from the architecture definition
 * (transformers' modeling_llama.py / modeling_qwen2.py) in plain float64 loops.
 *
 * It exists to check the fast native implementation: it is slow and deliberately
 * naive (no KV cache, no batching, no fused kernels), and every step mirrors one line
 * of the Hugging Face model. The only float32 rounding it performs is the one Hugging
 * Face itself imposes on the RoPE inverse frequencies (kept as a float32 buffer), and,
 * when asked (ReferenceOptions), the split of activations into two bf16 pieces that the
 * native AMX path performs for bf16 weights.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SpeculaError } from '../errors.js';
import { parseConfig, type LlamaConfig } from '../model/config.js';
import { readSafetensors, type TensorInfo } from '../model/safetensors.js';

/** Weights of a model directory widened to float64 (keyed by Hugging Face tensor name), with its config. */
export interface ReferenceModel {
  config: LlamaConfig;
  weights: Map<string, Float64Array>;
  /** The stored dtype of each tensor ('F32', 'F16' or 'BF16'), keyed like weights. */
  dtypes: Map<string, string>;
}

/** Options of referenceLogits. */
export interface ReferenceOptions {
  /**
   * What the products with bf16 weights see of their activations. 'exact' (default): the
   * float64 values. 'two-piece': what the native AMX path sees when it splits each
   * activation into two bf16 pieces (runtimeInfo().amxPieces === 2): the value rounded to
   * float32, x, becomes hi + lo with hi = x rounded to bf16 and lo = (x - hi) rounded to
   * bf16 (to nearest, ties to even). As there, only for products whose input length is a
   * multiple of 32.
   */
  bf16Activations?: 'exact' | 'two-piece';
}

// ---------------------------------------------------------------------------------
// Decoding of the stored element types (little-endian), exact.
// ---------------------------------------------------------------------------------

/** IEEE 754 binary16 bits -> number (exact: every half is representable in a double). */
function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24; // zero or subnormal: m * 2^-14 / 2^10
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 bits -> number: a bfloat16 is the upper half of a float32. */
const bf16Scratch = new DataView(new ArrayBuffer(4));
function bfloat16ToNumber(bits: number): number {
  bf16Scratch.setUint32(0, (bits & 0xffff) << 16, true);
  return bf16Scratch.getFloat32(0, true);
}

/** Decodes one tensor's bytes (F32, F16 or BF16) into float64. */
function decodeTensor(info: TensorInfo, data: Buffer): Float64Array {
  const count = info.shape.reduce((a, b) => a * b, 1);
  const view = new DataView(data.buffer, data.byteOffset + info.offset, info.bytes);
  const out = new Float64Array(count);
  const elementBytes = info.dtype === 'F32' ? 4 : 2;
  if (info.bytes !== count * elementBytes) {
    throw new SpeculaError('E_FORMAT', `${info.file}: tensor ${info.name}: ${info.bytes} bytes for ${count} ${info.dtype} elements`);
  }
  for (let i = 0; i < count; i++) {
    if (info.dtype === 'F32') out[i] = view.getFloat32(4 * i, true);
    else if (info.dtype === 'F16') out[i] = halfToNumber(view.getUint16(2 * i, true));
    else out[i] = bfloat16ToNumber(view.getUint16(2 * i, true));
  }
  return out;
}

// ---------------------------------------------------------------------------------
// Expected tensors.
// ---------------------------------------------------------------------------------

/** Every tensor the forward pass reads, with its expected [rows, cols] (or [n]) shape. */
function expectedTensors(config: LlamaConfig): Map<string, number[]> {
  const H = config.hiddenSize;
  const I = config.intermediateSize;
  const V = config.vocabSize;
  const qDim = config.numHeads * config.headDim;
  const kvDim = config.numKvHeads * config.headDim;
  const expected = new Map<string, number[]>();
  expected.set('model.embed_tokens.weight', [V, H]);
  if (!config.tieWordEmbeddings) expected.set('lm_head.weight', [V, H]);
  expected.set('model.norm.weight', [H]);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    expected.set(`${p}input_layernorm.weight`, [H]);
    expected.set(`${p}post_attention_layernorm.weight`, [H]);
    expected.set(`${p}self_attn.q_proj.weight`, [qDim, H]);
    expected.set(`${p}self_attn.k_proj.weight`, [kvDim, H]);
    expected.set(`${p}self_attn.v_proj.weight`, [kvDim, H]);
    expected.set(`${p}self_attn.o_proj.weight`, [H, qDim]);
    if (config.qkvBias) {
      expected.set(`${p}self_attn.q_proj.bias`, [qDim]);
      expected.set(`${p}self_attn.k_proj.bias`, [kvDim]);
      expected.set(`${p}self_attn.v_proj.bias`, [kvDim]);
    }
    if (config.oBias) expected.set(`${p}self_attn.o_proj.bias`, [H]);
    expected.set(`${p}mlp.gate_proj.weight`, [I, H]);
    expected.set(`${p}mlp.up_proj.weight`, [I, H]);
    expected.set(`${p}mlp.down_proj.weight`, [H, I]);
  }
  return expected;
}

const SUPPORTED_DTYPES = new Set(['F32', 'F16', 'BF16']);

/**
 * Loads dir/config.json and dir/model.safetensors, decoding every F32/F16/BF16 tensor
 * to float64. Checks that every tensor the forward pass needs is present (E_FORMAT),
 * has the expected shape (E_SHAPE) and a supported dtype (E_UNSUPPORTED).
 */
export function loadReferenceModel(dir: string): ReferenceModel {
  const configFile = join(dir, 'config.json');
  let configText: string;
  try {
    configText = readFileSync(configFile, 'utf8');
  } catch (err) {
    throw new SpeculaError('E_IO', `${configFile}: cannot be read (${(err as Error).message})`);
  }
  let configJson: unknown;
  try {
    configJson = JSON.parse(configText);
  } catch (err) {
    throw new SpeculaError('E_FORMAT', `${configFile}: not valid JSON (${(err as Error).message})`);
  }
  const config = parseConfig(configJson, configFile);

  const weightsFile = join(dir, 'model.safetensors');
  const header = readSafetensors(weightsFile);
  let data: Buffer;
  try {
    data = readFileSync(weightsFile);
  } catch (err) {
    throw new SpeculaError('E_IO', `${weightsFile}: cannot be read (${(err as Error).message})`);
  }

  // Validate the tensors the forward pass needs before decoding anything.
  for (const [name, shape] of expectedTensors(config)) {
    const info = header.tensors.get(name);
    if (!info) throw new SpeculaError('E_FORMAT', `${weightsFile}: missing tensor ${name}`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new SpeculaError('E_SHAPE', `${weightsFile}: tensor ${name}: expected shape [${shape.join(', ')}], found [${info.shape.join(', ')}]`);
    }
    if (!SUPPORTED_DTYPES.has(info.dtype)) {
      throw new SpeculaError('E_UNSUPPORTED', `${weightsFile}: tensor ${name}: dtype ${info.dtype} (expected F32, F16 or BF16)`);
    }
  }

  // Decode every tensor of a floating dtype we know (extra tensors are kept, harmlessly).
  const weights = new Map<string, Float64Array>();
  const dtypes = new Map<string, string>();
  for (const [name, info] of header.tensors) {
    if (!SUPPORTED_DTYPES.has(info.dtype)) continue;
    weights.set(name, decodeTensor(info, data));
    dtypes.set(name, info.dtype);
  }
  return { config, weights, dtypes };
}

// ---------------------------------------------------------------------------------
// Building blocks.
// ---------------------------------------------------------------------------------

/** Fetches a weight, checking that it exists and has `length` elements. */
function weight(model: ReferenceModel, name: string, length: number): Float64Array {
  const w = model.weights.get(name);
  if (!w) throw new SpeculaError('E_FORMAT', `reference model: missing tensor ${name}`);
  if (w.length !== length) {
    throw new SpeculaError('E_SHAPE', `reference model: tensor ${name}: expected ${length} elements, found ${w.length}`);
  }
  return w;
}

/** Linear layer: y = x W^T + b, with W row-major [outDim, inDim] and b [outDim] (optional). */
function linear(x: Float64Array, W: Float64Array, b: Float64Array | null, outDim: number, inDim: number): Float64Array {
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let sum = 0;
    for (let i = 0; i < inDim; i++) sum += x[i]! * W[o * inDim + i]!;
    y[o] = b ? sum + b[o]! : sum;
  }
  return y;
}

/** x rounded to bf16 (8 significant bits), to nearest, ties to even (x finite). */
function roundToBf16(x: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  let e = Math.floor(Math.log2(Math.abs(x)));
  // log2 may be off by one next to a power of two: settle 2^e <= |x| < 2^(e+1).
  if (2 ** e > Math.abs(x)) e -= 1;
  else if (2 ** (e + 1) <= Math.abs(x)) e += 1;
  const ulp = 2 ** (e - 7);
  const r = x / ulp; // exact: ulp is a power of two
  const f = Math.floor(r), d = r - f;
  const n = d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
  return n * ulp;
}

/** x as two bf16 pieces see it: hi + lo, hi = bf16(float32(x)), lo = bf16(float32(x) - hi). */
function twoPieces(x: number): number {
  const f = Math.fround(x);
  let hi = roundToBf16(f);
  // Past the largest bf16 the native split truncates instead (its x - hi stays finite).
  if (Math.abs(hi) > BF16_MAX) hi = Math.sign(f) * BF16_MAX;
  return hi + roundToBf16(f - hi);
}

const BF16_MAX = (2 - 2 ** -7) * 2 ** 127;

/** RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight. */
function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  const n = x.length;
  let sumSquares = 0;
  for (let i = 0; i < n; i++) sumSquares += x[i]! * x[i]!;
  const inv = 1 / Math.sqrt(sumSquares / n + eps);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) y[i] = x[i]! * inv * w[i]!;
  return y;
}

/** silu(x) = x * sigmoid(x) = x / (1 + exp(-x)). */
function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/**
 * RoPE inverse frequencies inv_freq[i] = 1 / theta^(2i / headDim), with the optional
 * "llama3" scaling, computed in float64 and then rounded to float32 (Hugging Face keeps
 * inv_freq as a float32 buffer).
 */
function ropeInverseFrequencies(config: LlamaConfig): Float64Array {
  const half = config.headDim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / config.ropeTheta ** ((2 * i) / config.headDim);
    const s = config.ropeScaling;
    if (s) {
      const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowFreqWavelen) {
        f = f / s.factor; // low frequencies: scaled down fully
      } else if (wavelen >= highFreqWavelen) {
        // medium band: interpolate between scaled and unscaled
        const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        f = ((1 - smooth) * f) / s.factor + smooth * f;
      } // high frequencies (wavelen < highFreqWavelen): unchanged
    }
    invFreq[i] = Math.fround(f);
  }
  return invFreq;
}

/**
 * Rotates each head vector of `x` (numHeads vectors of headDim, concatenated) in place
 * for position `pos`, rotate_half form: the first half pairs with the second half.
 */
function applyRope(x: Float64Array, numHeads: number, headDim: number, pos: number, invFreq: Float64Array): void {
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    const base = h * headDim;
    for (let i = 0; i < half; i++) {
      const angle = invFreq[i]! * pos;
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      const a = x[base + i]!;
      const b = x[base + i + half]!;
      x[base + i] = a * cos - b * sin;
      x[base + i + half] = b * cos + a * sin;
    }
  }
}

// ---------------------------------------------------------------------------------
// Forward pass.
// ---------------------------------------------------------------------------------

/**
 * Logits of the full causal sequence `tokens` starting at position 0, as a row-major
 * [tokens.length, vocabSize] Float64Array (row t: the logits after reading tokens[0..t]).
 */
export function referenceLogits(model: ReferenceModel, tokens: readonly number[], options: ReferenceOptions = {}): Float64Array {
  if (!Array.isArray(tokens)) throw new SpeculaError('E_ARG', 'tokens: expected an array of token ids');
  const c = model.config;
  const V = c.vocabSize;
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const D = c.headDim;
  const nH = c.numHeads;
  const nKv = c.numKvHeads;
  const qDim = nH * D;
  const kvDim = nKv * D;
  const T = tokens.length;
  const eps = c.rmsNormEps;

  tokens.forEach((tok, t) => {
    if (!Number.isInteger(tok) || tok < 0 || tok >= V) {
      throw new SpeculaError('E_VALUE', `tokens[${t}]: expected an integer token id in [0, ${V}), found ${tok}`);
    }
  });
  if (nH % nKv !== 0) throw new SpeculaError('E_SHAPE', `numHeads ${nH} is not a multiple of numKvHeads ${nKv}`);
  if (D % 2 !== 0) throw new SpeculaError('E_SHAPE', `headDim ${D} must be even for RoPE`);
  const groupSize = nH / nKv; // query heads per kv head (repeat_kv)
  const mode = options.bf16Activations ?? 'exact';
  if (mode !== 'exact' && mode !== 'two-piece') {
    throw new SpeculaError('E_ARG', `options.bf16Activations: expected 'exact' or 'two-piece', received ${String(mode)}`);
  }
  // linear() with the named weight, its activations as the native product sees them.
  const product = (x: Float64Array, name: string, W: Float64Array, b: Float64Array | null, outDim: number, inDim: number) =>
    linear(mode === 'two-piece' && model.dtypes.get(name) === 'BF16' && inDim % 32 === 0 ? x.map(twoPieces) : x, W, b, outDim, inDim);

  // Embedding lookup: h[t] = embed_tokens[tokens[t]].
  const embed = weight(model, 'model.embed_tokens.weight', V * H);
  let hidden: Float64Array[] = tokens.map((tok) => embed.slice(tok * H, (tok + 1) * H));

  const invFreq = ropeInverseFrequencies(c);
  const scale = 1 / Math.sqrt(D);

  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const inputNorm = weight(model, `${p}input_layernorm.weight`, H);
    const postNorm = weight(model, `${p}post_attention_layernorm.weight`, H);
    const Wq = weight(model, `${p}self_attn.q_proj.weight`, qDim * H);
    const Wk = weight(model, `${p}self_attn.k_proj.weight`, kvDim * H);
    const Wv = weight(model, `${p}self_attn.v_proj.weight`, kvDim * H);
    const Wo = weight(model, `${p}self_attn.o_proj.weight`, H * qDim);
    const bq = c.qkvBias ? weight(model, `${p}self_attn.q_proj.bias`, qDim) : null;
    const bk = c.qkvBias ? weight(model, `${p}self_attn.k_proj.bias`, kvDim) : null;
    const bv = c.qkvBias ? weight(model, `${p}self_attn.v_proj.bias`, kvDim) : null;
    const bo = c.oBias ? weight(model, `${p}self_attn.o_proj.bias`, H) : null;
    const Wgate = weight(model, `${p}mlp.gate_proj.weight`, I * H);
    const Wup = weight(model, `${p}mlp.up_proj.weight`, I * H);
    const Wdown = weight(model, `${p}mlp.down_proj.weight`, H * I);

    // --- Self-attention block: h = h + o_proj(attn(input_layernorm(h))) ---
    const q: Float64Array[] = [];
    const k: Float64Array[] = [];
    const v: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const x = rmsNorm(hidden[t]!, inputNorm, eps);
      const qt = product(x, `${p}self_attn.q_proj.weight`, Wq, bq, qDim, H);
      const kt = product(x, `${p}self_attn.k_proj.weight`, Wk, bk, kvDim, H);
      const vt = product(x, `${p}self_attn.v_proj.weight`, Wv, bv, kvDim, H);
      applyRope(qt, nH, D, t, invFreq); // position of token t is t
      applyRope(kt, nKv, D, t, invFreq);
      q.push(qt);
      k.push(kt);
      v.push(vt);
    }

    const afterAttn: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attnOut = new Float64Array(qDim); // heads concatenated in head order
      for (let h = 0; h < nH; h++) {
        const g = Math.floor(h / groupSize); // the kv head this query head reads
        const qOff = h * D;
        const kvOff = g * D;
        // Causal scores s_j = q . k_j / sqrt(D) for j <= t.
        const scores = new Float64Array(t + 1);
        for (let j = 0; j <= t; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[t]![qOff + d]! * k[j]![kvOff + d]!;
          scores[j] = dot * scale;
        }
        // Softmax (max-subtracted for stability; mathematically identical).
        let max = -Infinity;
        for (let j = 0; j <= t; j++) max = Math.max(max, scores[j]!);
        let sum = 0;
        for (let j = 0; j <= t; j++) {
          scores[j] = Math.exp(scores[j]! - max);
          sum += scores[j]!;
        }
        // Weighted sum of values.
        for (let j = 0; j <= t; j++) {
          const pj = scores[j]! / sum;
          for (let d = 0; d < D; d++) attnOut[qOff + d] = attnOut[qOff + d]! + pj * v[j]![kvOff + d]!;
        }
      }
      const o = product(attnOut, `${p}self_attn.o_proj.weight`, Wo, bo, H, qDim);
      const h = new Float64Array(H);
      for (let i = 0; i < H; i++) h[i] = hidden[t]![i]! + o[i]!;
      afterAttn.push(h);
    }

    // --- MLP block: h = h + down_proj(silu(gate_proj(a)) * up_proj(a)), a = post_attention_layernorm(h) ---
    hidden = afterAttn.map((h) => {
      const a = rmsNorm(h, postNorm, eps);
      const gate = product(a, `${p}mlp.gate_proj.weight`, Wgate, null, I, H);
      const up = product(a, `${p}mlp.up_proj.weight`, Wup, null, I, H);
      const act = new Float64Array(I);
      for (let i = 0; i < I; i++) act[i] = silu(gate[i]!) * up[i]!;
      const down = product(act, `${p}mlp.down_proj.weight`, Wdown, null, H, I);
      const out = new Float64Array(H);
      for (let i = 0; i < H; i++) out[i] = h[i]! + down[i]!;
      return out;
    });
  }

  // Final norm and LM head (tied to the embedding when tieWordEmbeddings).
  const finalNorm = weight(model, 'model.norm.weight', H);
  const lmHeadName = c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const lmHead = weight(model, lmHeadName, V * H);
  const logits = new Float64Array(T * V);
  for (let t = 0; t < T; t++) {
    const x = rmsNorm(hidden[t]!, finalNorm, eps);
    logits.set(product(x, lmHeadName, lmHead, null, V, H), t * V);
  }
  return logits;
}
