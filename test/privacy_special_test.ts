/**
 * Special functions and FFT of the privacy accountants, against reference values
 * (erfc from Abramowitz and Stegun / high-precision tables) and a naive DFT.
 */
import { strict as assert } from "node:assert";
import {
  erf,
  erfc,
  erfcx,
  gaussianHockeyStick,
  logErfc,
  normalCdf,
  normalSf,
} from "../src/privacy/special.ts";
import { fft } from "../src/privacy/fft.ts";

function close(actual: number, expected: number, rel: number, what = "") {
  const err = Math.abs(actual - expected) / Math.max(Math.abs(expected), 1e-300);
  assert.ok(err <= rel, `${what}: ${actual} vs ${expected} (relative error ${err} > ${rel})`);
}

Deno.test("erfc matches reference values to ~1e-15 relative, deep into the tail", () => {
  const table: [number, number][] = [
    [0, 1],
    [0.5, 0.4795001221869535],
    [1, 0.15729920705028513],
    [1.2, 0.08968602177036462],
    [2, 0.004677734981047266],
    [3, 2.209049699858544e-5],
    [5, 1.5374597944280349e-12],
    [10, 2.088487583762545e-45],
    [-1, 1.8427007929497148],
    [-3, 1.9999779095030015],
  ];
  for (const [x, v] of table) close(erfc(x), v, 4e-15, `erfc(${x})`);
  close(erf(0.5), 0.5204998778130465, 4e-15, "erf(0.5)");
  close(erfcx(30), 0.018795888861416751, 4e-15, "erfcx(30)");
  close(logErfc(30), Math.log(0.018795888861416751) - 900, 1e-15, "logErfc(30)");
  close(normalSf(1.959963984540054), 0.025, 1e-14, "normalSf(1.96)");
  close(normalCdf(-1.959963984540054), 0.025, 1e-14, "normalCdf(-1.96)");
  // continuity where the series hands over to the continued fraction
  const t = Math.sqrt(1.5);
  close(erfc(t * (1 - 1e-15)), erfc(t * (1 + 1e-15)), 1e-14, "erfc at the switch");
});

Deno.test("Gaussian hockey stick equals the direct formula where that is accurate", () => {
  for (const mu of [0.05, 0.5, 2]) {
    for (const a of [-2, 0, 0.7, 3]) {
      const direct = normalSf(a - mu) - Math.exp(a * mu - mu * mu / 2) * normalSf(a);
      close(gaussianHockeyStick(a, mu), direct, 1e-9, `H(${a}, ${mu})`);
    }
  }
  // far tail: positive and decreasing, where the direct formula cancels to 0
  const far = gaussianHockeyStick(30, 0.03);
  assert.ok(far > 0 && far < 1e-190);
});

Deno.test("FFT equals a naive DFT and inverts", () => {
  const n = 64;
  const re = new Float64Array(n);
  const im = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    re[i] = Math.sin(i * 1.3) + 0.1 * i;
    im[i] = Math.cos(i * 0.7);
  }
  const re0 = re.slice();
  const im0 = im.slice();
  fft(re, im);
  for (const k of [0, 1, 5, 31, 63]) {
    let sr = 0;
    let si = 0;
    for (let j = 0; j < n; j++) {
      const a = (-2 * Math.PI * j * k) / n;
      sr += re0[j] * Math.cos(a) - im0[j] * Math.sin(a);
      si += re0[j] * Math.sin(a) + im0[j] * Math.cos(a);
    }
    assert.ok(Math.abs(re[k] - sr) < 1e-12 && Math.abs(im[k] - si) < 1e-12, `bin ${k}`);
  }
  fft(re, im, true);
  for (let i = 0; i < n; i++) assert.ok(Math.abs(re[i] - re0[i]) < 1e-13);
});
