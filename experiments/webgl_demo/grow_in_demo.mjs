// Grow a webgl8 model with the article's own demo code and print the final state.
//
//   node grow_in_demo.mjs CA_JS MODEL_JSON SIZE STEPS SEED > state.json
//
// CA_JS is public/ca.js of github.com/distillpub/post--growing-ca (not copied here). Its
// createCA runs in headless Chromium's software WebGL (SwiftShader) on a SIZE x SIZE grid,
// from the demo's own seed, for STEPS steps. The demo draws each step's fire-mask seed from
// Math.random, which is replaced by a generator seeded with SEED so that runs repeat.
// Output: {"renderer", "bytes"}: the state texture as read back (RGBA8, the demo's packing:
// 2x2 tiles of 4 channels, rows from the grid's y = 0). compare.py decodes it.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const [caPath, modelPath, size, steps, seed] = process.argv.slice(2);
const caSource = readFileSync(caPath, 'utf8');
if (!/^export function createCA/m.test(caSource)) throw new Error(`${caPath}: no "export function createCA"`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--no-sandbox'],
});
try {
  const page = await browser.newPage();
  await page.addScriptTag({ content: readFileSync(require.resolve('twgl.js/dist/4.x/twgl-full.js'), 'utf8') });
  // ca.js is an ES module; as a classic script its createCA goes on window.
  await page.addScriptTag({ content: caSource.replace(/^export function createCA/m, 'window.createCA = function createCA') });
  const result = await page.evaluate(({ layers, size, steps, seed }) => {
    let state = seed >>> 0;  // a 32-bit LCG in place of Math.random
    Math.random = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296;
    const gl = document.createElement('canvas').getContext('webgl');
    if (!gl) throw new Error('no WebGL context');
    const ca = window.createCA(gl, layers, [size, size]);
    for (let i = 0; i < steps; ++i) ca.step();
    ca.flush();  // leaves the state's framebuffer bound
    const bytes = new Uint8Array(2 * size * 2 * size * 4);  // 16 channels: 2x2 tiles of RGBA
    gl.readPixels(0, 0, 2 * size, 2 * size, gl.RGBA, gl.UNSIGNED_BYTE, bytes);
    return { renderer: gl.getParameter(gl.getExtension('WEBGL_debug_renderer_info')?.UNMASKED_RENDERER_WEBGL ?? gl.RENDERER), bytes: Array.from(bytes) };
  }, { layers: JSON.parse(readFileSync(modelPath, 'utf8')), size: +size, steps: +steps, seed: +seed });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
