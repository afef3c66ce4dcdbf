/**
 * config.json of a Llama-family model (LlamaForCausalLM, MistralForCausalLM,
 * Qwen2ForCausalLM), validated with zod and normalised into the fields the runtime uses.
 */
import { z } from 'zod';
import { SpeculaError } from '../errors.js';

export const ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;
export type Architecture = (typeof ARCHITECTURES)[number];

/** The normalised configuration (all fields resolved, camelCase). */
export interface LlamaConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** rope_scaling of type "llama3", or null. */
  ropeScaling: null | { factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Qwen2; Llama with attention_bias). */
  qkvBias: boolean;
  /** o projection has a bias (Llama with attention_bias). */
  oBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
}

const positiveInt = z.number().int().positive();
const tokenId = z.number().int().nonnegative().nullable().optional();

const schema = z.object({
  architectures: z.array(z.string()).nonempty(),
  vocab_size: positiveInt,
  hidden_size: positiveInt,
  intermediate_size: positiveInt,
  num_hidden_layers: positiveInt,
  num_attention_heads: positiveInt,
  num_key_value_heads: positiveInt.optional(),
  head_dim: positiveInt.nullable().optional(),
  rms_norm_eps: z.number().positive().optional(),
  rope_theta: z.number().positive().optional(),
  rope_scaling: z.record(z.string(), z.unknown()).nullable().optional(),
  max_position_embeddings: positiveInt.optional(),
  tie_word_embeddings: z.boolean().optional(),
  hidden_act: z.string().optional(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
  sliding_window: z.number().int().positive().nullable().optional(),
  use_sliding_window: z.boolean().optional(),
  bos_token_id: tokenId,
  eos_token_id: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullable().optional(),
  pad_token_id: tokenId,
});

function unsupported(file: string, what: string): never {
  throw new SpeculaError('E_UNSUPPORTED', `${file}: ${what}`);
}

/** Validates a parsed config.json; `file` names it in errors. */
export function parseConfig(json: unknown, file = 'config.json', contextLength?: number): LlamaConfig {
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const path = issue.path.join('.') || '(root)';
    throw new SpeculaError('E_FORMAT', `${file}: ${path}: ${issue.message}`);
  }
  const c = r.data;
  const arch = c.architectures[0]!;
  if (!(ARCHITECTURES as readonly string[]).includes(arch)) {
    unsupported(file, `architecture ${JSON.stringify(arch)} is not supported (expected one of ${ARCHITECTURES.join(', ')})`);
  }
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') unsupported(file, `hidden_act ${JSON.stringify(act)} is not supported (expected "silu")`);
  if (c.mlp_bias) unsupported(file, 'mlp_bias is not supported');
  const heads = c.num_attention_heads;
  const kvHeads = c.num_key_value_heads ?? heads;
  if (heads % kvHeads !== 0) {
    throw new SpeculaError('E_FORMAT', `${file}: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kvHeads})`);
  }
  const headDim = c.head_dim ?? c.hidden_size / heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new SpeculaError('E_FORMAT', `${file}: head dimension ${headDim} must be an even integer (hidden_size / num_attention_heads or head_dim)`);
  }
  let ropeScaling: LlamaConfig['ropeScaling'] = null;
  if (c.rope_scaling) {
    const type = c.rope_scaling.rope_type ?? c.rope_scaling.type;
    if (type !== 'llama3') unsupported(file, `rope_scaling of type ${JSON.stringify(type)} is not supported (only "llama3")`);
    const num = (k: string) => {
      const v = c.rope_scaling![k];
      if (typeof v !== 'number' || !(v > 0)) throw new SpeculaError('E_FORMAT', `${file}: rope_scaling.${k}: expected a positive number, received ${JSON.stringify(v)}`);
      return v;
    };
    ropeScaling = {
      factor: num('factor'), lowFreqFactor: num('low_freq_factor'), highFreqFactor: num('high_freq_factor'),
      originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
    };
  }
  const maxPos = c.max_position_embeddings ?? 2048;
  const window = c.sliding_window;
  // Mistral always windows when sliding_window is set; Qwen2 only with use_sliding_window.
  const windowed = window != null && (arch === 'MistralForCausalLM' || (arch === 'Qwen2ForCausalLM' && c.use_sliding_window === true));
  if (windowed && (contextLength ?? maxPos) > window) {
    unsupported(file, `sliding_window ${window} is smaller than the context (${contextLength ?? maxPos}); pass contextLength <= ${window}`);
  }
  const qwen = arch === 'Qwen2ForCausalLM';
  const eos = c.eos_token_id;
  return {
    architecture: arch as Architecture,
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    numLayers: c.num_hidden_layers,
    numHeads: heads,
    numKvHeads: kvHeads,
    headDim,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    ropeTheta: c.rope_theta ?? 10000,
    ropeScaling,
    maxPositionEmbeddings: maxPos,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    qkvBias: qwen || c.attention_bias === true,
    oBias: !qwen && c.attention_bias === true,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds: eos == null ? [] : Array.isArray(eos) ? eos : [eos],
    padTokenId: c.pad_token_id ?? null,
  };
}
