#!/usr/bin/env node
// `npm run bench:native [-- args]`: builds the core and bench/native/*.cc with CMake
// (Release) and runs the kernel microbenchmark with the given arguments.
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
run('cmake', ['--build', build, '--parallel', String(availableParallelism()), '--target', 'bench_kernels']);
run(path.join(build, 'bench_kernels'), process.argv.slice(2));
