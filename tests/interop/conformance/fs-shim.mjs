// Node.js 20 lacks `fs.globSync` (added in 22), which the conformance suite imports; this
// module is `fs` plus a `globSync` enough for the suite's one use (`**/<name>` under a cwd).
import fs from 'node:fs';
import path from 'node:path';

export * from 'node:fs';
export default fs;

export function globSync(pattern, opts = {}) {
  const cwd = opts.cwd || process.cwd();
  const name = pattern.split('/').pop();
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name === name) out.push(path.relative(cwd, p));
    }
  };
  if (fs.existsSync(cwd)) walk(cwd);
  return out;
}
