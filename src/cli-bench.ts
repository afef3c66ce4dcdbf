/**
 * `specula bench`: the temperature study on the bundled pair (default) or on a given
 * target, drafts and prompt file; a progress bar with ETA, a table at the end,
 * results.jsonl, summary.json and charts in --out; `bench merge` combines shards.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import cliProgress from 'cli-progress';
import path from 'node:path';
import { bench, DEFAULT_TEMPERATURES, merge, type CellRecord } from './bench/run.js';
import type { CellSummary } from './bench/study.js';
import { setThreads } from './runtime.js';

type Parse = (v: string) => number;

/** A comma-separated list of numbers >= 0 (integers when `integer`): a commander option parser. */
export function list(integer: boolean) {
  return (value: string): number[] => {
    const xs = value.split(',').map((s) => Number(s.trim()));
    if (xs.length === 0 || xs.some((x) => !Number.isFinite(x) || x < 0 || (integer && !Number.isInteger(x)))) {
      throw new InvalidArgumentError(`expected comma-separated ${integer ? 'integers' : 'numbers'} >= 0`);
    }
    return xs;
  };
}

function shardArg(value: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(value.trim());
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new InvalidArgumentError('expected i/n with 0 <= i < n (e.g. 0/4)');
  return { index: Number(m[1]), count: Number(m[2]) };
}

/** One row of the table: a cell's draft, T, γ and summary (a results.jsonl record or a summary.json result). */
export interface TableRow {
  draft: string;
  temperature: number;
  gamma: number;
  summary: CellSummary;
}

/** The terminal (and README) table: one row per cell, mean ± half-width of the 95% CI. */
export function benchTable(rows: readonly (CellRecord | TableRow)[]): string {
  const f = (e: { mean: number; lo: number; hi: number }, d = 2) => `${e.mean.toFixed(d)} ± ${((e.hi - e.lo) / 2).toFixed(d)}`;
  const body = rows.map((x) => {
    const r = 'config' in x ? { draft: x.config.draft, temperature: x.config.temperature, gamma: x.config.gamma, summary: x.summary } : x;
    return [
      path.basename(r.draft), String(r.temperature), String(r.gamma),
      r.summary.arTokensPerSecond.mean.toFixed(0), r.summary.specTokensPerSecond.mean.toFixed(0), f(r.summary.speedup),
      f(r.summary.alpha, 3), f(r.summary.tau), f(r.summary.expectedAcceptance, 3), f(r.summary.costRatio, 3), f(r.summary.predictedSpeedup),
    ];
  });
  const head = ['draft', 'T', 'γ', 'AR tok/s', 'spec tok/s', 'speedup', 'α', 'τ', 'E[accept]', 'c', 'predicted'];
  return [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i < 3 ? '---' : '---:')).join('|')}|`, ...body.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function addBenchCommand(program: Command, integer: (min: number) => Parse): void {
  const cmd = program.command('bench');
  cmd.command('merge')
    .description('combine the outputs of `bench --shard i/n` runs into the results, summary and charts of one unsharded run')
    .argument('<dirs...>', 'shard output directories (or their results.jsonl files)')
    .option('--out <dir>', 'output directory', 'bench-out')
    .action(async (dirs: string[], o: { out: string }) => {
      const { records, files } = await merge(dirs, o.out);
      console.log(benchTable(records));
      console.error(`merged ${records.length} cells from ${dirs.length} shard(s); wrote ${files.map((f) => path.basename(f)).join(', ')} to ${o.out}`);
    });
  cmd
    .description('the temperature study: speculative vs autoregressive decoding across temperatures (default: the bundled pair)')
    .option('--target <dir>', 'target model directory (default: the bundled target)')
    .option('--draft <dirs>', 'draft model directories, comma-separated (default: every bundled draft)')
    .option('--dataset <path>', 'prompts: JSONL/JSON (GSM8K question, HumanEval prompt, seed tasks instruction) or one per line')
    .option('--temperatures <list>', 'decoding temperatures', list(false), DEFAULT_TEMPERATURES)
    .option('--gamma <list>', 'draft lengths γ', list(true), [4])
    .option('--prompts <n>', 'prompts used', integer(1))
    .option('--max-new-tokens <n>', 'tokens generated per run', integer(1), 128)
    .option('--seeds <n>', 'seeds per prompt', integer(1), 4)
    .option('--stop-at-eos', 'end runs at the end-of-sequence token (default: every run generates --max-new-tokens tokens)')
    .option('--threads <n>', 'compute threads (default: available cores)', integer(1))
    .option('--out <dir>', 'output directory', 'bench-out')
    .option('--shard <i/n>', 'run the i-th of n deterministic parts of the grid', shardArg)
    .action(async (o: { target?: string; draft?: string; dataset?: string; temperatures: number[]; gamma: number[]; prompts?: number;
      maxNewTokens: number; seeds: number; stopAtEos?: boolean; threads?: number; out: string; shard?: { index: number; count: number } }) => {
      if (o.threads !== undefined) setThreads(o.threads);
      const tty = process.stderr.isTTY === true;
      const bar = tty ? new cliProgress.SingleBar({ format: 'runs {value}/{total} |{bar}| ETA {eta_formatted}', stream: process.stderr, hideCursor: true },
        cliProgress.Presets.shades_classic) : undefined;
      let every = 1;
      const { records, files } = await bench({
        out: o.out, temperatures: o.temperatures, gammas: o.gamma, maxNewTokens: o.maxNewTokens, seeds: o.seeds, stopAtEos: o.stopAtEos === true,
        ...(o.target !== undefined ? { target: o.target } : {}),
        ...(o.draft !== undefined ? { drafts: o.draft.split(',').filter((d) => d !== '') } : {}),
        ...(o.dataset !== undefined ? { dataset: o.dataset } : {}), ...(o.prompts !== undefined ? { prompts: o.prompts } : {}),
        ...(o.shard !== undefined ? { shard: o.shard } : {}),
        onNotice: (m) => console.error(`note: ${m}`),
        onStart: (i) => {
          console.error(`prompts: ${i.prompts}; ${i.cells} cells, ${i.runs} decoding runs`);
          every = Math.max(1, Math.round(i.runs / 10));
          bar?.start(i.runs, 0);
        },
        onProgress: (done, total) => {
          if (bar) bar.update(done);
          else if (done % every === 0 || done === total) console.error(`runs ${done}/${total}`);
        },
      }).finally(() => bar?.stop());
      console.log(benchTable(records));
      console.error(`wrote ${files.map((f) => path.basename(f)).join(', ')} to ${o.out}`);
    });
}
