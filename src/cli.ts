#!/usr/bin/env node
/**
 * The `specula` command line. Later issues add generate, train, distill and bench;
 * for now it has `demo`, a small run of the verification kernel on synthetic logits.
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { SpeculaError } from './errors.js';
import { runtimeInfo, setThreads, version } from './runtime.js';
import { sample, verify, type SamplingParams } from './sampling.js';

function integer(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
    return n;
  };
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
