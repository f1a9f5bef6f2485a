"use strict";
// A jaxchar model in the browser: the forward pass of a checkpoint exported by
// `python -m jaxchar.export` (stacked LSTM layers over one-hot or embedded characters, then the
// output layer) and its sampling, as JAX computes them (tests/test_export.py compares the two
// in headless Chromium). No dependencies; works as a classic script or an ES module.
const jaxcharModel = (() => {
  function halfToFloat(bits) {
    const sign = bits & 0x8000 ? -1 : 1, exponent = (bits >> 10) & 31, fraction = bits & 1023;
    if (exponent === 0) return sign * fraction * 2 ** -24;
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }

  function decode(tensor, dtype) {  // base64 little-endian float32 or float16 -> Float32Array
    const raw = atob(tensor.data);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    if (dtype === "float32") return new Float32Array(bytes.buffer);
    const halves = new Uint16Array(bytes.buffer);
    const out = new Float32Array(halves.length);
    for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
    return out;
  }

  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  function affine(x, kernel, bias) {  // x [in] @ kernel [in, out] + bias [out]
    const out = Float32Array.from(bias), width = bias.length;
    for (let k = 0; k < x.length; k++) {
      const xk = x[k];
      if (xk === 0) continue;
      for (let j = 0, row = k * width; j < width; j++) out[j] += xk * kernel[row + j];
    }
    return out;
  }

  class Model {
    constructor(spec) {
      this.spec = spec;
      this.chars = Array.from(spec.vocab);  // code points, as Python indexes strings
      this.ids = new Map(this.chars.map((c, i) => [c, i]));
      this.hidden = spec.hidden;
      this.maxlen = spec.maxlen;
      const t = (name) => decode(spec.tensors[name], spec.dtype);
      this.embed = spec.embed_dim ? t("embed") : null;
      this.layers = [];
      for (let i = 0; i < spec.num_layers; i++) {
        this.layers.push({wIn: t(`layer${i}.w_in`), wRec: t(`layer${i}.w_rec`),
                          bias: t(`layer${i}.bias`)});
      }
      this.headKernel = t("head.kernel");
      this.headBias = t("head.bias");
    }

    zeroState() {
      return this.layers.map(() => [new Float32Array(this.hidden), new Float32Array(this.hidden)]);
    }

    step(state, id) {  // one character through every layer: the new [[c, h], ...]
      const gates = 4 * this.hidden, first = this.layers[0];
      let z;
      if (this.embed) {
        const e = this.spec.embed_dim;
        z = affine(this.embed.subarray(id * e, (id + 1) * e), first.wIn, first.bias);
      } else {  // one-hot input: row `id` of the input kernel
        z = Float32Array.from(first.wIn.subarray(id * gates, (id + 1) * gates));
        for (let j = 0; j < gates; j++) z[j] += first.bias[j];
      }
      const next = [];
      for (let i = 0; i < this.layers.length; i++) {
        const layer = this.layers[i];
        if (i) z = affine(next[i - 1][1], layer.wIn, layer.bias);
        const [c, h] = state[i], pre = affine(h, layer.wRec, z), H = this.hidden;
        const c2 = new Float32Array(H), h2 = new Float32Array(H);
        for (let j = 0; j < H; j++) {  // gates i, f, g, o, as Flax's OptimizedLSTMCell
          c2[j] = sigmoid(pre[H + j]) * c[j] + sigmoid(pre[j]) * Math.tanh(pre[2 * H + j]);
          h2[j] = sigmoid(pre[3 * H + j]) * Math.tanh(c2[j]);
        }
        next.push([c2, h2]);
      }
      return next;
    }

    logits(state) {
      return affine(state[state.length - 1][1], this.headKernel, this.headBias);
    }

    run(ids, state = this.zeroState()) {
      for (const id of ids) state = this.step(state, id);
      return state;
    }

    windowLogits(ids) {  // the model on the last maxlen ids, from a zero state (window mode)
      return this.logits(this.run(ids.slice(-this.maxlen)));
    }

    encodePrime(prime) {  // as jaxchar's sampler: lowercased if trained so, unknown dropped
      if (this.spec.lowercase) prime = prime.toLowerCase();
      const ids = Array.from(prime).filter((c) => this.ids.has(c)).map((c) => this.ids.get(c));
      if (ids.length) return ids;
      return [this.ids.has("\n") ? this.ids.get("\n") : 0];
    }

    unknownChars(prime) {  // the prime's characters the model never saw, each once, in order
      if (this.spec.lowercase) prime = prime.toLowerCase();
      return [...new Set(Array.from(prime).filter((c) => !this.ids.has(c)))];
    }

    decode(ids) {
      return ids.map((i) => this.chars[i]).join("");
    }

    // Teacher-forced log-probabilities: for each id of `text` after `prime`, log p(id | before).
    logProbsAlong(prime, text, mode) {
      const context = this.encodePrime(prime).slice(-this.maxlen), out = [];
      let ids = context.slice(), state = mode === "stateful" ? this.run(context) : null;
      for (const id of Array.from(text).map((c) => this.ids.get(c))) {
        out.push(logSoftmax(mode === "stateful" ? this.logits(state) : this.windowLogits(ids))[id]);
        ids.push(id);
        if (state) state = this.step(state, id);
      }
      return out;
    }

    // One character at a time: next() returns {text, done, stoppedBy}.
    generator({prime = "", length = 400, temperature = 0.5, topK = 0, topP = 1, stops = [],
               mode = "window", seed = 0, uniforms = null} = {}) {
      const model = this, random = uniforms ? null : mulberry32(seed);
      let ids = this.encodePrime(prime).slice(-this.maxlen);
      let state = mode === "stateful" ? this.run(ids) : null;
      let text = "", written = 0, stoppedBy = null;
      return {
        next() {
          if (written >= length || stoppedBy !== null) return {text, done: true, stoppedBy};
          const logits = state ? model.logits(state) : model.windowLogits(ids);
          const u = uniforms ? uniforms[written] : random();
          const id = choose(logits, temperature, topK, topP, u);
          text += model.chars[id];
          written += 1;
          ids.push(id);
          if (ids.length > model.maxlen) ids = ids.slice(-model.maxlen);
          if (state) state = model.step(state, id);
          stoppedBy = stops.find((s) => text.endsWith(s)) ?? null;
          return {text, done: written >= length || stoppedBy !== null, stoppedBy};
        },
      };
    }

    generate(options) {  // all at once: {text, stoppedBy}
      const g = this.generator(options);
      let r;
      do { r = g.next(); } while (!r.done);
      return {text: r.text, stoppedBy: r.stoppedBy};
    }
  }

  function logSoftmax(logits) {
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - max);
    const shift = max + Math.log(sum);
    return Array.from(logits, (x) => x - shift);
  }

  // The next id from logits with uniform u in [0, 1): top-k and top-p (ties at the cut kept),
  // then the inverse CDF over the kept ids in id order. jaxchar's Python sampler draws with
  // JAX's keys instead; the test reference (tests/helpers.py) does exactly this.
  function choose(logits, temperature, topK, topP, u) {
    const n = logits.length, scaled = Array.from(logits, (x) => x / temperature);
    const sorted = scaled.slice().sort((a, b) => b - a);
    let cut = topK > 0 && topK < n ? sorted[topK - 1] : -Infinity;
    if (topP < 1) {
      const kept = sorted.filter((x) => x >= cut), max = kept[0];
      const weights = kept.map((x) => Math.exp(x - max)), total = weights.reduce((a, b) => a + b);
      let before = 0, last = 0;
      for (let j = 0; j < kept.length && before < topP; j++) {
        last = j;
        before += weights[j] / total;
      }
      cut = Math.max(cut, kept[last]);
    }
    let max = -Infinity;
    for (const x of scaled) if (x >= cut) max = Math.max(max, x);
    const weights = scaled.map((x) => (x >= cut ? Math.exp(x - max) : 0));
    const total = weights.reduce((a, b) => a + b);
    let target = u * total, chosen = -1;
    for (let i = 0; i < n; i++) {
      if (weights[i] === 0) continue;
      chosen = i;
      target -= weights[i];
      if (target < 0) break;
    }
    return chosen;
  }

  function mulberry32(seed) {  // a small seeded generator of uniforms for the page's seed
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6D2B79F5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  return {Model, choose, logSoftmax, load: (spec) => new Model(spec)};
})();
