// Command-line options of the JS benchmarks: `opt('--name', default)` is the value after
// --name (or the default), `flag('--name')` whether it is present.
const args = process.argv.slice(2);

export const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};

export const flag = (name) => args.includes(name);
