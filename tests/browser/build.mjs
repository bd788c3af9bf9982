// Bundles page.js and the e2b SDK for the browser. The SDK's ESM build imports
// a few Node built-ins at module level that only its Node-only paths (template
// builds, local files) use; in a browser bundle they become empty objects, as
// browser bundlers' Node polyfill fallbacks do.
import { build } from 'esbuild'

const nodeBuiltinsAsEmpty = {
  name: 'node-builtins-as-empty',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) => ({ path: args.path, namespace: 'empty' }))
    b.onLoad({ filter: /.*/, namespace: 'empty' }, () => ({ contents: 'export default {}', loader: 'js' }))
  },
}

await build({
  entryPoints: ['page.js'],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  outfile: 'dist/page.bundle.js',
  plugins: [nodeBuiltinsAsEmpty],
  logLevel: 'warning',
})
