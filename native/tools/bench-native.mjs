#!/usr/bin/env node
// `npm run bench:native [-- [kd|model] args]`: builds the core and bench/native/*.cc with
// CMake (Release) and runs the sampling-kernel (default), KD (kd) or model (model) benchmark.
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
// otherwise bench/native/kernels.cc.
const args = process.argv.slice(2);
const which = args[0] === 'kd' ? 'bench_kd' : args[0] === 'model' ? 'bench_model' : 'bench_kernels';
if (args[0] === 'kd' || args[0] === 'model') args.shift();
run('cmake', ['--build', build, '--parallel', String(availableParallelism()), '--target', which]);
run(path.join(build, which), args);
