// `node --import ./register.mjs …`: resolves the suite's `fs` to fs-shim.mjs.
import { register } from 'node:module';

register(
  'data:text/javascript,' + encodeURIComponent(`
    export async function resolve(specifier, context, next) {
      if (specifier === 'fs' && context.parentURL && context.parentURL.includes('/@modelcontextprotocol/conformance/')) {
        return { url: ${JSON.stringify(new URL('./fs-shim.mjs', import.meta.url).href)}, shortCircuit: true };
      }
      return next(specifier, context);
    }`),
);
