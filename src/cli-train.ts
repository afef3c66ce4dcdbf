/**
 * The training commands of the `specula` CLI: train, distill, eval-alignment. A progress
 * bar (loss, tokens/s, ETA) on a terminal; one line per 5% of the run elsewhere (logs, CI).
 */
import { Command, Option } from 'commander';
import { list } from './cli-bench.js';
import cliProgress from 'cli-progress';
import { SpeculaError } from './errors.js';
import { PRESETS, type ModelShape, type PresetName, type WeightDType } from './model/init.js';
import {
  distill, evalAlignment, train, DEFAULT_EVAL_TEMPERATURES, type CommonOptions, type DataSource, type EvalReport, type RunInfo,
  type StepReport,
} from './train/run.js';
import type { Divergence } from './kd.js';

type Parse = (v: string) => number;

function parseConfig(json: string): Partial<ModelShape> {
  try {
    return JSON.parse(json) as Partial<ModelShape>;
  } catch (err) {
    throw new SpeculaError('E_ARG', `--config: expected JSON, received ${JSON.stringify(json)} (${(err as Error).message})`);
  }
}

function duration(ms: number): string {
  if (!Number.isFinite(ms)) return '?';
  const s = Math.round(ms / 1000);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
    : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

function evalLine(e: EvalReport): string {
  if (e.heldOutLoss !== undefined) return `step ${e.step}: held-out loss ${e.heldOutLoss.toFixed(4)} (${e.heldOutTokens} tokens)`;
  const acc = Object.entries(e.expectedAcceptance ?? {}).map(([t, a]) => `T=${t}: ${a.toFixed(3)}`).join(', ');
  return `step ${e.step}: held-out divergence ${e.heldOutDivergence!.toFixed(4)}; expected acceptance ${acc}`;
}

/** onStart/onStep/onEval hooks that draw a progress bar (TTY) or print sparse lines. */
function progress(): { hooks: Pick<CommonOptions, 'onStart' | 'onStep' | 'onEval'>; stop(): void } {
  const tty = process.stderr.isTTY === true;
  let bar: cliProgress.SingleBar | undefined;
  let every = 1;
  const hooks = {
    onStart(i: RunInfo) {
      console.error(`data: ${i.data}; ${i.trainTokens} training tokens, ${i.heldOutTokens} held out`);
      console.error(`model: ${i.parameters} parameters; ${i.resumedFrom > 0 ? `resuming at step ${i.resumedFrom}` : 'from step 0'} of ${i.steps}`);
      every = Math.max(1, Math.round(i.steps / 20));
      if (tty) {
        bar = new cliProgress.SingleBar({
          format: 'step {value}/{total} |{bar}| loss {loss} | {tps} tok/s | ETA {eta_h}', stream: process.stderr, hideCursor: true,
        }, cliProgress.Presets.shades_classic);
        bar.start(i.steps, i.resumedFrom, { loss: '-', tps: '-', eta_h: '?' });
      }
    },
    onStep(s: StepReport) {
      const values = { loss: s.loss.toFixed(4), tps: s.tokensPerSecond.toFixed(0), eta_h: duration(s.etaMs) };
      if (bar) bar.update(s.step, values);
      else if (s.step % every === 0 || s.step === s.steps) {
        console.error(`step ${s.step}/${s.steps} loss ${values.loss} lr ${s.lr.toExponential(2)} |g| ${s.gradNorm.toFixed(3)} ` +
          `${values.tps} tok/s elapsed ${duration(s.elapsedMs)} ETA ${values.eta_h}`);
      }
    },
    onEval(e: EvalReport) {
      const line = evalLine(e);
      if (bar) process.stderr.write(`\r\x1b[K${line}\n`);
      else console.error(line);
    },
  };
  return { hooks, stop: () => bar?.stop() };
}

function withAbort<T extends object>(o: T): T & { signal: AbortSignal } {
  const ctl = new AbortController();
  process.once('SIGINT', () => {
    console.error('\nstopping at the next step (the last checkpoint resumes the run)...');
    ctl.abort();
  });
  return { ...o, signal: ctl.signal };
}

interface CommonCli {
  out: string; steps: number; batch: number; seqLen: number; lr?: number; minLr?: number; warmup?: number; weightDecay: number;
  clip: number; seed: number; saveEvery: number; evalEvery: number; evalWindows: number; dtype: WeightDType; threads?: number;
}

function common(c: Command, integer: (min: number) => Parse, real: (min: number, max?: number) => Parse): Command {
  return c
    .requiredOption('--out <dir>', 'checkpoint directory (a model directory plus optimizer state); an existing run there resumes')
    .requiredOption('--steps <n>', 'optimizer steps', integer(1))
    .option('--batch <n>', 'sequences per step', integer(1), 16)
    .option('--seq-len <n>', 'tokens per sequence', integer(2), 256)
    .option('--lr <x>', 'peak learning rate (cosine schedule with linear warmup)', real(0))
    .option('--min-lr <x>', 'final learning rate (default lr / 10)', real(0))
    .option('--warmup <n>', 'warmup steps (default min(100, steps / 10))', integer(0))
    .option('--weight-decay <x>', 'AdamW decoupled weight decay (matrices only)', real(0), 0.1)
    .option('--clip <x>', 'global gradient-norm clip; 0 = none', real(0), 1)
    .option('--seed <n>', 'seed of the initial weights and of the batches', integer(0), 0)
    .option('--save-every <n>', 'steps between checkpoints', integer(1), 100)
    .option('--eval-every <n>', 'steps between held-out evaluations; 0 = at the end only', integer(0), 100)
    .option('--eval-windows <n>', 'held-out windows per evaluation', integer(1), 64)
    .addOption(new Option('--dtype <type>', "dtype of the checkpoint's model.safetensors").choices(['f32', 'f16', 'bf16']).default('f32'))
    .option('--threads <n>', 'compute threads (default: available cores)', integer(1));
}

function commonOptions(o: CommonCli): Omit<CommonOptions, 'onStart' | 'onStep' | 'onEval' | 'signal'> {
  const x: Record<string, unknown> = {
    out: o.out, steps: o.steps, batch: o.batch, seqLen: o.seqLen, weightDecay: o.weightDecay, clip: o.clip, seed: o.seed,
    saveEvery: o.saveEvery, evalEvery: o.evalEvery, evalWindows: o.evalWindows, dtype: o.dtype,
  };
  for (const k of ['lr', 'minLr', 'warmup', 'threads'] as const) if (o[k] !== undefined) x[k] = o[k];
  return x as unknown as CommonOptions;
}

async function summary(p: ReturnType<typeof progress>, run: () => Promise<{ out: string; finalLoss: number; tokensPerSecond: number; wallMs: number; lastEval?: EvalReport }>) {
  try {
    const r = await run();
    p.stop();
    console.error(`done: ${r.out}; final loss ${r.finalLoss.toFixed(4)}, ${r.tokensPerSecond.toFixed(0)} tokens/s, ${duration(r.wallMs)}`);
    if (r.lastEval) console.error(evalLine(r.lastEval));
  } catch (err) {
    p.stop();
    throw err;
  }
}

export function addTrainingCommands(program: Command, integer: (min: number) => Parse, real: (min: number, max?: number) => Parse): void {
  common(program.command('train')
    .description('pretrain a new model on a text corpus with next-token cross-entropy (resumable)')
    .requiredOption('--corpus <path>', 'text corpus: JSONL/JSON (GSM8K, HumanEval, Alpaca seed tasks, {text}) or plain text')
    .addOption(new Option('--preset <name>', 'a named configuration').choices(Object.keys(PRESETS)))
    .option('--config <json>', 'model shape as JSON over the tiny preset, e.g. {"hiddenSize":256,"numLayers":4}')
    .option('--tokenizer <byte|dir>', "'byte' or a directory with tokenizer.json", 'byte'), integer, real)
    .action(async (o: CommonCli & { corpus: string; preset?: string; config?: string; tokenizer: string }) => {
      if ((o.preset === undefined) === (o.config === undefined)) throw new SpeculaError('E_ARG', 'train: give exactly one of --preset NAME or --config JSON');
      const p = progress();
      await summary(p, () => train(withAbort({
        ...commonOptions(o), corpus: o.corpus, tokenizer: o.tokenizer,
        config: o.preset !== undefined ? (o.preset as PresetName) : parseConfig(o.config!), ...p.hooks,
      })));
    });

  common(program.command('distill')
    .description('distill a draft (student) toward a target (teacher) with a KD divergence at a temperature (resumable)')
    .requiredOption('--teacher <dir>', 'the target model directory')
    .option('--student <dir>', 'a model directory to start from (same vocabulary)')
    .option('--student-config <json>', 'or a new student: a preset name or a shape as JSON (vocabulary from the teacher)')
    .requiredOption('--data <path>', 'text and prompts: JSONL/JSON (GSM8K, HumanEval, Alpaca seed tasks) or plain text')
    .addOption(new Option('--data-source <s>', 'fixed text, teacher-generated, student-generated (on-policy) or mixed')
      .choices(['fixed', 'teacher', 'student', 'mixed']).default('fixed'))
    .addOption(new Option('--divergence <d>', 'KD divergence').choices(['fkl', 'rkl', 'jsd', 'tvd']).default('fkl'))
    .option('--temperature <t>', 'KD temperature (use the decoding temperature)', real(0), 1)
    .option('--beta <b>', 'JSD mixing weight', real(0, 1), 0.5)
    .option('--ce-weight <w>', 'mix in next-token cross-entropy: (1 - w) KD + w CE', real(0, 1), 0)
    .option('--data-temperature <t>', 'sampling temperature of generated data (default: the KD temperature)', real(0))
    .option('--refresh-every <n>', 'steps between snapshots of the student for on-policy data', integer(1), 10)
    .option('--eval-temperatures <list>', 'decoding temperatures of the held-out acceptance evaluation', list(false), DEFAULT_EVAL_TEMPERATURES), integer, real)
    .action(async (o: CommonCli & { teacher: string; student?: string; studentConfig?: string; data: string; dataSource: DataSource;
      divergence: Divergence; temperature: number; beta: number; ceWeight: number; dataTemperature?: number; refreshEvery: number;
      evalTemperatures: number[] }) => {
      if (o.temperature <= 0) throw new SpeculaError('E_VALUE', `--temperature: expected a number > 0, received ${o.temperature}`);
      let studentConfig: PresetName | Partial<ModelShape> | undefined;
      if (o.studentConfig !== undefined) studentConfig = o.studentConfig in PRESETS ? (o.studentConfig as PresetName) : parseConfig(o.studentConfig);
      const p = progress();
      await summary(p, () => distill(withAbort({
        ...commonOptions(o), teacher: o.teacher, data: o.data, dataSource: o.dataSource, divergence: o.divergence,
        temperature: o.temperature, beta: o.beta, ceWeight: o.ceWeight, refreshEvery: o.refreshEvery, evalTemperatures: o.evalTemperatures,
        ...(o.student !== undefined ? { student: o.student } : {}), ...(studentConfig !== undefined ? { studentConfig } : {}),
        ...(o.dataTemperature !== undefined ? { dataTemperature: o.dataTemperature } : {}), ...p.hooks,
      })));
    });

  program.command('eval-alignment')
    .description('print the expected acceptance sum_x min(p_T, q_T) of drafts against a target on text, per temperature (no generation)')
    .requiredOption('--target <dir>', 'the target model directory')
    .requiredOption('--draft <dirs>', 'draft model directories, comma-separated')
    .requiredOption('--data <path>', 'text: JSONL/JSON (GSM8K, HumanEval, Alpaca seed tasks) or plain text')
    .option('--temperatures <list>', 'decoding temperatures', list(false), DEFAULT_EVAL_TEMPERATURES)
    .option('--seq-len <n>', 'tokens per window', integer(2), 256)
    .option('--windows <n>', 'windows evaluated (consecutive from the start of the data)', integer(1), 64)
    .option('--threads <n>', 'compute threads (default: available cores)', integer(1))
    .option('--json', 'print the table as JSON')
    .action(async (o: { target: string; draft: string; data: string; temperatures: number[]; seqLen: number; windows: number; threads?: number; json?: boolean }) => {
      const t = await evalAlignment({
        target: o.target, drafts: o.draft.split(',').filter((d) => d !== ''), data: o.data, temperatures: o.temperatures,
        seqLen: o.seqLen, windows: o.windows, ...(o.threads !== undefined ? { threads: o.threads } : {}),
      });
      if (o.json) {
        console.log(JSON.stringify(t, null, 2));
        return;
      }
      console.log(`expected acceptance sum_x min(p_T, q_T) on ${t.data}, ${t.positions} positions (± 95% CI over windows)`);
      console.log(`| draft | ${t.temperatures.map((x) => `T=${x}`).join(' | ')} |`);
      console.log(`|---|${t.temperatures.map(() => '---:').join('|')}|`);
      for (const r of t.rows) console.log(`| ${r.draft} | ${r.acceptance.map((a, i) => `${a.toFixed(3)} ± ${r.halfWidth[i]!.toFixed(3)}`).join(' | ')} |`);
    });
}
