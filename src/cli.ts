#!/usr/bin/env node
/**
 * The `specula` command line: `generate` (speculative decoding with a target and a draft
 * model), `init-model` (a random-initialised model directory) and `demo` (the
 * verification kernel on synthetic logits), and train / distill / eval-alignment (cli-train.ts).
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { SpeculativeDecoder, type GenerateOptions, type GenerationStats } from './engine/decoder.js';
import { SpeculaError } from './errors.js';
import { initModel, PRESETS, type PresetName, type WeightDType } from './model/init.js';
import { runtimeInfo, setThreads, version } from './runtime.js';
import { sample, verify, type SamplingParams } from './sampling.js';
import { addTrainingCommands } from './cli-train.js';
import { addBenchCommand } from './cli-bench.js';

function integer(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
    return n;
  };
}

function real(min: number, max = Infinity, minOpen = false) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || (minOpen && n === min) || n > max) {
      throw new InvalidArgumentError(`expected a number in ${minOpen ? '(' : '['}${min}, ${max === Infinity ? 'inf)' : `${max}]`}`);
    }
    return n;
  };
}

function seedArg(value: string): bigint {
  if (!/^\d+$/.test(value) || BigInt(value) >= 2n ** 64n) throw new InvalidArgumentError('expected an integer in [0, 2^64)');
  return BigInt(value);
}

interface GenerateCliOptions {
  target: string; draft: string; prompt: string; temperature: number; topK?: number; topP?: number; minP?: number;
  draftTemperature?: number; gamma: number; maxNewTokens: number; seed?: bigint; stop?: string[]; ignoreEos?: boolean; threads?: number;
  contextLength?: number; json?: boolean;
}

function statsLines(s: GenerationStats): string {
  const f = (x: number, d = 2) => x.toFixed(d);
  return [
    `acceptance ${f(s.acceptanceRate, 3)} (expected ${f(s.expectedAcceptance, 3)}), tau ${f(s.meanAcceptedLength)} tokens per target call, ` +
      `by position [${s.acceptanceByPosition.map((a) => f(a)).join(', ')}]`,
    `${f(s.tokensPerSecond, 1)} tokens/s; target ${s.targetCalls} calls ${f(s.targetMs, 1)} ms, draft ${s.draftCalls} calls ` +
      `${f(s.draftMs, 1)} ms, sampling ${f(s.samplingMs, 1)} ms, prefill ${f(s.prefillMs, 1)} ms`,
    `cost ratio c ${f(s.costRatio, 3)}, predicted speedup ${f(s.predictedSpeedup)} (gamma ${s.gamma})`,
  ].join('\n');
}

async function generate(o: GenerateCliOptions): Promise<void> {
  const decoder = await SpeculativeDecoder.load({
    target: o.target, draft: o.draft,
    ...(o.threads !== undefined ? { threads: o.threads } : {}),
    ...(o.contextLength !== undefined ? { contextLength: o.contextLength } : {}),
  });
  const ctl = new AbortController();
  const onSigint = () => ctl.abort();
  process.once('SIGINT', onSigint);
  try {
    const draft: GenerateOptions['draft'] = o.draftTemperature !== undefined ? { temperature: o.draftTemperature } : undefined;
    const opts: GenerateOptions = {
      maxNewTokens: o.maxNewTokens, temperature: o.temperature, gamma: o.gamma, signal: ctl.signal,
      ...(o.topK !== undefined ? { topK: o.topK } : {}), ...(o.topP !== undefined ? { topP: o.topP } : {}),
      ...(o.minP !== undefined ? { minP: o.minP } : {}), ...(draft ? { draft } : {}),
      ...(o.seed !== undefined ? { seed: o.seed } : {}), ...(o.stop ? { stop: o.stop } : {}),
      ...(o.ignoreEos ? { ignoreEos: true } : {}),
    };
    if (o.json) {
      const r = await decoder.generate(o.prompt, opts);
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    let stats: GenerationStats | undefined, reason: string | undefined;
    for await (const c of decoder.stream(o.prompt, opts)) {
      if (c.text) process.stdout.write(c.text);
      stats = c.stats;
      reason = c.finishReason ?? reason;
    }
    process.stdout.write('\n');
    if (stats) console.error(`\n[${reason}] ${statsLines(stats)}`);
  } finally {
    process.off('SIGINT', onSigint);
    await decoder.dispose();
  }
}

interface InitCliOptions { out: string; preset?: string; config?: string; seed: number; dtype: WeightDType; initStd?: number }

async function initModelCmd(o: InitCliOptions): Promise<void> {
  if ((o.preset === undefined) === (o.config === undefined)) {
    throw new SpeculaError('E_ARG', 'init-model: give exactly one of --preset NAME or --config JSON');
  }
  let config: Parameters<typeof initModel>[1]['config'];
  if (o.preset !== undefined) {
    config = o.preset as PresetName;
  } else {
    try {
      config = JSON.parse(o.config!);
    } catch (err) {
      throw new SpeculaError('E_ARG', `--config: expected JSON, received ${JSON.stringify(o.config)} (${(err as Error).message})`);
    }
  }
  await initModel(o.out, { config, seed: o.seed, dtype: o.dtype, ...(o.initStd !== undefined ? { initStd: o.initStd } : {}) });
  console.error(`wrote ${o.out} (${o.preset ?? 'custom config'}, ${o.dtype}, seed ${o.seed})`);
}

/** Deterministic normal variates (xorshift32 + Box-Muller): synthetic logits only. */
function normals(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next())), t = 2 * Math.PI * next();
    out[i] = r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

function table(header: string[], rows: string[][]): string {
  const width = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (r: string[]) => r.map((v, c) => v.padStart(width[c]!)).join('  ');
  return [line(header), line(width.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

interface DemoOptions { vocab: number; batch: number; gamma: number; seed: number; threads?: number }

function demo(o: DemoOptions): void {
  if (o.threads !== undefined) setThreads(o.threads);
  const { vocab: V, batch: B, gamma: G } = o;
  const info = runtimeInfo();
  console.log(`specula ${version} demo: verify() on synthetic logits, batch ${B}, gamma ${G}, vocab ${V} ` +
    `(${info.threads} threads, ${info.simd})`);
  console.log('target logits ~ 3 N(0, 1); draft logits = target + 1.5 N(0, 1): a draft that is close but not equal\n');
  // Target rows [B, G+1, V]; the draft's row at (b, i) is the target's row plus noise.
  const target = normals(B * (G + 1) * V, o.seed).map((x) => 3 * x);
  const noise = normals(B * G * V, o.seed + 1);
  const draft = new Float32Array(B * G * V);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < G * V; j++) draft[b * G * V + j] = target[b * (G + 1) * V + j]! + 1.5 * noise[b * G * V + j]!;
  }
  const seeds = Array.from({ length: B }, (_, b) => BigInt(o.seed) * 1_000_003n + BigInt(b));
  const rows: string[][] = [];
  for (const temperature of [0, 0.5, 1, 1.5, 2]) {
    const params: SamplingParams = { temperature };
    // Draft tokens x_i ~ q_i, from the "sample" stream at position i of each sequence.
    const started = process.hrtime.bigint();
    const draftTokens = sample(draft, {
      rows: B * G, vocab: V, params,
      seeds: Array.from({ length: B * G }, (_, r) => seeds[Math.floor(r / G)]!),
      offsets: Array.from({ length: B * G }, (_, r) => r % G),
    });
    const sampled = process.hrtime.bigint();
    const r = verify({ targetLogits: target, draftLogits: draft, draftTokens, batch: B, gamma: G, vocab: V, target: params, seeds });
    const done = process.hrtime.bigint();
    let expected = 0, accepted = 0, first = 0;
    for (let i = 0; i < B * G; i++) expected += r.expectedAcceptance[i]!;
    for (let b = 0; b < B; b++) {
      accepted += r.accepted[b]!;
      if (r.accepted[b]! > 0) first++;
    }
    const verifyMs = Number(done - sampled) / 1e6;
    const gbps = (B * (2 * G + 1) * V * 4) / (verifyMs / 1e3) / 1e9;
    rows.push([
      temperature.toFixed(2), (expected / (B * G)).toFixed(3), (first / B).toFixed(3),
      (accepted / B).toFixed(2), ((accepted + B) / B).toFixed(2),
      (Number(sampled - started) / 1e6).toFixed(1), verifyMs.toFixed(1), gbps.toFixed(1),
    ]);
  }
  console.log(table(
    ['T', 'E[accept] sum min(p,q)', 'accepted at pos 0', 'accepted/block', 'tokens/block (tau)', 'draft sample ms', 'verify ms', 'verify GB/s'],
    rows,
  ));
  console.log('\nE[accept] is the expected acceptance of one drafted position; "accepted at pos 0" is its realised');
  console.log('frequency over the batch (they agree up to sampling noise). tau = accepted + 1 tokens per target pass.');
}

const program = new Command();
program
  .name('specula')
  .description('Exact speculative decoding for Node.js')
  .version(version)
  .configureOutput({ outputError: (text, write) => write(`${text.trimEnd()} (see --help)\n`) })
  // Usage errors exit with code 2 (set before the subcommands, which inherit it).
  .exitOverride();

program
  .command('demo')
  .description('run the verification kernel on synthetic logits across temperatures')
  .option('--vocab <n>', 'vocabulary size', integer(2), 32000)
  .option('--batch <n>', 'sequences per verify call', integer(1), 64)
  .option('--gamma <n>', 'drafted tokens per sequence', integer(1), 4)
  .option('--seed <n>', 'seed of the synthetic logits and of the sampling', integer(0), 1)
  .option('--threads <n>', 'compute threads (default: available cores)', integer(1))
  .action((opts: DemoOptions) => demo(opts));

program
  .command('generate')
  .description('generate text with speculative decoding: streams the text to stdout, the statistics to stderr')
  .requiredOption('--target <dir>', 'target model directory (Hugging Face layout)')
  .requiredOption('--draft <dir>', 'draft model directory (same vocabulary)')
  .requiredOption('--prompt <text>', 'the prompt')
  .option('--temperature <t>', 'target temperature; 0 = greedy', real(0), 1)
  .option('--top-k <k>', 'keep the k most probable tokens', integer(1))
  .option('--top-p <p>', 'nucleus: smallest set with mass >= p', real(0, 1, true))
  .option('--min-p <p>', 'keep tokens with p >= min-p * max p', real(0, 1))
  .option('--draft-temperature <t>', "the draft's temperature (default: the target's)", real(0))
  .option('--gamma <n>', 'tokens drafted per step; 0 = autoregressive', integer(0), 4)
  .option('--max-new-tokens <n>', 'tokens to generate at most', integer(1), 128)
  .option('--seed <n>', 'uint64 seed (default: random)', seedArg)
  .option('--stop <text...>', 'stop strings')
  .option('--ignore-eos', 'keep generating through end-of-sequence tokens (fixed-budget benchmarks)')
  .option('--context-length <n>', "longest sequence (default: the models' context)", integer(2))
  .option('--threads <n>', 'compute threads (default: available cores)', integer(1))
  .option('--json', 'print the result object (text, tokens, finishReason, stats) instead of streaming')
  .action((opts: GenerateCliOptions) => generate(opts));

program
  .command('init-model')
  .description('write a random-initialised model directory (config.json, model.safetensors, byte-level tokenizer.json)')
  .requiredOption('--out <dir>', 'directory to write')
  .addOption(new Option('--preset <name>', 'a named configuration').choices(Object.keys(PRESETS)))
  .option('--config <json>', 'a LlamaConfig as JSON (e.g. {"hiddenSize":256,...}); instead of --preset')
  .requiredOption('--seed <n>', 'seed of the weights', integer(0))
  .addOption(new Option('--dtype <type>', 'weight dtype').choices(['f32', 'f16', 'bf16']).default('f32'))
  .option('--init-std <s>', 'standard deviation of the weights (default 0.02)', real(0, 10))
  .action((opts: InitCliOptions) => initModelCmd(opts));

addTrainingCommands(program, integer, real);
addBenchCommand(program, integer);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
  if (err instanceof SpeculaError) {
    console.error(`specula: ${err.message} [${err.code}]`);
    process.exit(1);
  }
  throw err;
}
