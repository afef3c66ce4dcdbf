#!/usr/bin/env node
// `npm run bench:native [-- [kd|model|engine] args]`: builds the core and bench/native/*.cc with
// CMake (Release) and runs the sampling-kernel (default), KD (kd), model (model) or engine
// (engine) benchmark.
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const build = path.join(root, 'build-native');
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error || r.status !== 0) process.exit(r.status ?? 1);
}
run('cmake', ['-S', root, '-B', build, '-DCMAKE_BUILD_TYPE=Release']);
// `npm run bench:native -- kd ...` runs bench/native/kd.cc, `-- model ...` bench/native/model.cc,
// `-- engine ...` bench/native/engine.cc, otherwise bench/native/kernels.cc.
const args = process.argv.slice(2);
const named = { kd: 'bench_kd', model: 'bench_model', engine: 'bench_engine' };
const which = named[args[0]] ?? 'bench_kernels';
if (args[0] in named) args.shift();
run('cmake', ['--build', build, '--parallel', String(availableParallelism()), '--target', which]);
run(path.join(build, which), args);
