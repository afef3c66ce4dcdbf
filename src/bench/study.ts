/**
 * The temperature study (the core of `specula bench`): for every cell (draft, decoding
 * temperature T, γ) of a grid, the same prompts and seeds are decoded by the target alone
 * (γ = 0, the autoregressive baseline) and speculatively, and every per-run number is
 * kept: tokens/s of both, measured speedup, realized acceptance α and τ, acceptance by
 * position, expected acceptance Σ min(p_T, q_T) on the generated positions, the measured
 * cost ratio c and Leviathan's predicted speedup. Each is summarised by its mean over
 * prompts × seeds with a 95% confidence interval.
 *
 * Runs decode one sequence at a time (latency, the classic speculative-decoding measure).
 * The grid's cells are numbered in a fixed order, so `shard` (i of n) picks a
 * deterministic 1/n of them.
 */
import { SpeculativeDecoder, type GenerateResult } from '../engine/decoder.js';
import { loadModel, type Model } from '../model/model.js';
import { fail } from '../validate.js';

/** One decoded (prompt, seed) of a cell. */
export interface RunRecord {
  prompt: number;
  seed: number;
  /** Tokens generated and tokens/s: target alone (γ = 0) and speculative. */
  arTokens: number;
  arTokensPerSecond: number;
  specTokens: number;
  specTokensPerSecond: number;
  speedup: number;
  /** Realized α = accepted / tested, τ = emitted per target call. */
  alpha: number;
  tau: number;
  acceptanceByPosition: number[];
  expectedAcceptance: number;
  costRatio: number;
  predictedSpeedup: number;
}

/** Mean and 95% confidence interval (t distribution over the runs). */
export interface Estimate {
  mean: number;
  lo: number;
  hi: number;
  n: number;
}

export interface CellSummary {
  arTokensPerSecond: Estimate;
  specTokensPerSecond: Estimate;
  speedup: Estimate;
  alpha: Estimate;
  tau: Estimate;
  expectedAcceptance: Estimate;
  costRatio: Estimate;
  predictedSpeedup: Estimate;
  acceptanceByPosition: Estimate[];
}

export interface Cell {
  index: number;
  draft: string;
  temperature: number;
  gamma: number;
}

export interface CellResult extends Cell {
  runs: RunRecord[];
  summary: CellSummary;
}

export interface StudyGrid {
  drafts: string[];
  temperatures: number[];
  gammas: number[];
}

/** The grid's cells in their fixed order: draft-major, then temperature, then γ. */
export function gridCells(g: StudyGrid): Cell[] {
  const out: Cell[] = [];
  for (const draft of g.drafts) for (const temperature of g.temperatures) for (const gamma of g.gammas) {
    out.push({ index: out.length, draft, temperature, gamma });
  }
  return out;
}

/** The cells of shard i (0-based) of n: every n-th cell starting at i. */
export function shardCells(cells: Cell[], index: number, count: number): Cell[] {
  if (!Number.isInteger(count) || count < 1) fail('E_VALUE', 'shard', 'i/n with n >= 1', `${index}/${count}`);
  if (!Number.isInteger(index) || index < 0 || index >= count) fail('E_VALUE', 'shard', `i/n with 0 <= i < n`, `${index}/${count}`);
  return cells.filter((c) => c.index % count === index);
}

// Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12,
  2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042];

/** Mean with a 95% t interval; one value gives a zero-width interval. */
export function estimate(xs: readonly number[]): Estimate {
  const n = xs.length;
  if (n === 0) return { mean: NaN, lo: NaN, hi: NaN, n };
  const mean = xs.reduce((a, x) => a + x, 0) / n;
  if (n === 1) return { mean, lo: mean, hi: mean, n };
  const sd = Math.sqrt(xs.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1));
  const t = n - 1 <= 30 ? T975[n - 2]! : 1.96;
  const hw = (t * sd) / Math.sqrt(n);
  return { mean, lo: mean - hw, hi: mean + hw, n };
}

export function summarize(runs: readonly RunRecord[], gamma: number): CellSummary {
  const pick = (f: (r: RunRecord) => number) => estimate(runs.map(f));
  return {
    arTokensPerSecond: pick((r) => r.arTokensPerSecond),
    specTokensPerSecond: pick((r) => r.specTokensPerSecond),
    speedup: pick((r) => r.speedup),
    alpha: pick((r) => r.alpha),
    tau: pick((r) => r.tau),
    expectedAcceptance: pick((r) => r.expectedAcceptance),
    costRatio: pick((r) => r.costRatio),
    predictedSpeedup: pick((r) => r.predictedSpeedup),
    acceptanceByPosition: Array.from({ length: gamma }, (_, i) => pick((r) => r.acceptanceByPosition[i] ?? 0)),
  };
}

export interface StudyOptions extends StudyGrid {
  target: string;
  prompts: readonly string[];
  seeds: number;
  maxNewTokens: number;
  /** Only these cells (default: the whole grid). */
  cells?: Cell[];
  /**
   * End runs at the end-of-sequence token (default false: every run generates exactly
   * maxNewTokens tokens, so that tokens/s and speedups compare equal budgets).
   */
  stopAtEos?: boolean;
  /** Called once before the runs with the prompts cut to fit the context (see fitPrompts). */
  onPrompts?: (cut: PromptCut | null) => void;
  /** Called after every decoded run, with runs done and runs in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface PromptCut {
  /** Prompts that were longer than `keep` tokens. */
  count: number;
  /** Tokens kept: the BOS token (where the tokenizer adds one) and the prompt's last tokens. */
  keep: number;
  context: number;
}

/**
 * Tokenizes the prompts with the target's tokenizer and cuts those that leave no room
 * for `maxNewTokens` in a `context`-token window to their last tokens (after the BOS
 * token, kept where the tokenizer adds one), so that every run generates its full budget.
 */
export function fitPrompts(target: Model, prompts: readonly string[], context: number, maxNewTokens: number):
  { prompts: { tokens: number[] }[]; cut: PromptCut | null } {
  const keep = context - maxNewTokens;
  if (keep < 2) fail('E_VALUE', 'maxNewTokens', `at most ${context - 2} (the models' context is ${context} tokens)`, maxNewTokens);
  const bos = target.tokenizer.bosTokenId;
  let count = 0;
  const out = prompts.map((p) => {
    const ids = [...target.tokenizer.encode(p)];
    if (ids.length <= keep) return { tokens: ids };
    ++count;
    const head = bos !== null && ids[0] === bos ? [bos] : [];
    return { tokens: [...head, ...ids.slice(ids.length - (keep - head.length))] };
  });
  return { prompts: out, cut: count > 0 ? { count, keep, context } : null };
}

/** The sequence seed of (prompt p, seed s): the same for the baseline and every cell. */
function runSeed(p: number, s: number): bigint {
  return BigInt(1_000_003 * s + p + 1);
}

/**
 * Runs the cells of a study. For each temperature and each (prompt, seed), the target
 * alone (γ = 0) and then every cell at that temperature decode back to back, so that each
 * measured speedup is a ratio of runs made within a fraction of a second of each other:
 * load that comes and goes on a shared machine shifts both sides alike. The baseline run
 * is shared by the cells of its temperature.
 */
export async function runStudy(o: StudyOptions): Promise<CellResult[]> {
  const cells = o.cells ?? gridCells(o);
  const target = await loadModel(o.target);
  const models: Model[] = [];
  const decoders = new Map<string, SpeculativeDecoder>();
  try {
    for (const d of new Set(cells.map((c) => c.draft))) {
      const draft = await loadModel(d);
      models.push(draft);
      decoders.set(d, await SpeculativeDecoder.load({ target, draft, maxBatch: 1 }));
    }
    const fitted = fitPrompts(target, o.prompts, [...decoders.values()][0]!.contextLength, o.maxNewTokens);
    o.onPrompts?.(fitted.cut);
    const temps = [...new Set(cells.map((c) => c.temperature))];
    const total = (temps.length + cells.length) * o.prompts.length * o.seeds;
    let done = 0;
    const tick = () => o.onProgress?.(++done, total);
    const one = async (dec: SpeculativeDecoder, prompt: { tokens: number[] }, T: number, gamma: number, seed: bigint) =>
      (await dec.generate(prompt, { maxNewTokens: o.maxNewTokens, temperature: T, gamma, seed, ignoreEos: o.stopAtEos !== true })) as GenerateResult;
    const runs = new Map<number, RunRecord[]>(cells.map((c) => [c.index, []]));
    for (const T of temps) {
      const atT = cells.filter((c) => c.temperature === T);
      for (let p = 0; p < o.prompts.length; ++p) for (let s = 0; s < o.seeds; ++s) {
        const prompt = fitted.prompts[p]!, seed = runSeed(p, s);
        // The baseline: the target alone through the same engine (γ = 0 never runs the draft).
        const ar = await one(decoders.get(atT[0]!.draft)!, prompt, T, 0, seed);
        tick();
        for (const cell of atT) {
          const r = await one(decoders.get(cell.draft)!, prompt, T, cell.gamma, seed);
          runs.get(cell.index)!.push({
            prompt: p, seed: s,
            arTokens: ar.tokens.length, arTokensPerSecond: ar.stats.tokensPerSecond,
            specTokens: r.tokens.length, specTokensPerSecond: r.stats.tokensPerSecond,
            speedup: r.stats.tokensPerSecond / ar.stats.tokensPerSecond,
            alpha: r.stats.acceptanceRate, tau: r.stats.meanAcceptedLength, acceptanceByPosition: r.stats.acceptanceByPosition,
            expectedAcceptance: r.stats.expectedAcceptance, costRatio: r.stats.costRatio, predictedSpeedup: r.stats.predictedSpeedup,
          });
          tick();
        }
      }
    }
    return cells.map((cell) => ({ ...cell, runs: runs.get(cell.index)!, summary: summarize(runs.get(cell.index)!, cell.gamma) }));
  } finally {
    for (const d of decoders.values()) await d.dispose();
    for (const m of models) m.dispose();
    target.dispose();
  }
}
