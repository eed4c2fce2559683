// Quantizes sealed chunks from the fp16 pools into kv/quant.ts's int8/int4 layout on the GPU,
// so a seal reads back compressed bytes (and the CPU quantizes nothing). Keys per channel over
// a block's tokens, values per token per group of GV channels; padding slots of a last block
// have code 0 and (values) scale = min = 0; the key groups' range covers valid tokens only.
// The arithmetic follows quantizeChunk: min and max by the same comparisons in the same order,
// the f16 rounding of scale and min by the same bit manipulation (floatToHalf), and each code
// rounded half up from an exact comparison (two-sum), so codes and mins are the CPU's bits.
// The one difference allowed: the scale's f32 quotient (hi - lo) / qmax, which the CPU takes
// from an exact f64 difference and division; see test/kernels-quantize.test.ts.
//   kpool, vpool: (blocks, KV, BS, D) f16 packed in u32 pairs
//   jobs:  (n) vec4<u32> (first physical block, tokens, first output word, bits 8 | 4); the
//          chunk's blocks are consecutive physical blocks modulo `wrap` (the tail ring) when it is not 0
//   out:   u32 words; job j's chunk at word jobs[j].z in kv/quant.ts's layout (K parts of all
//          blocks, then V parts)
// Workgroup (job, kv head): block after block, params first (one thread per group), then codes
// (one thread per output word).
struct Params { KV: u32, wrap: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> kpool: array<u32>;
@group(0) @binding(2) var<storage, read> vpool: array<u32>;
@group(0) @binding(3) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

override WG: u32 = 128;
override D: u32 = 128;   // head dim, a multiple of 8 (of 32 above 32)
override GV: u32 = 32;   // channels per value group: min(32, D)
override BS: u32 = 16;   // tokens per block

// Per channel (keys) and per (token, group) (values): the f16-rounded scale and min as f32.
var<workgroup> kscale: array<f32, D>;
var<workgroup> kmin: array<f32, D>;
var<workgroup> vscale: array<f32, BS * (D / GV)>;
var<workgroup> vmin: array<f32, BS * (D / GV)>;

// f32 -> f16 bits, round to nearest even: kv/quant.ts floatToHalf, bit for bit.
fn half_bits(x: f32) -> u32 {
  let f = bitcast<u32>(x);
  let sign = (f >> 16u) & 0x8000u;
  let e = f & 0x7f800000u;
  if (e >= 0x47800000u) {
    if (e == 0x7f800000u && (f & 0x7fffffu) != 0u) { return sign | 0x7e00u; }
    return sign | 0x7c00u;
  }
  if (e <= 0x38000000u) {
    if (e < 0x33000000u) { return sign; }
    var sig = (0x800000u + (f & 0x7fffffu)) >> (113u - (e >> 23u));
    if ((sig & 0x3fffu) != 0x1000u || (f & 0x7ffu) != 0u) { sig = sig + 0x1000u; }
    return sign | (sig >> 13u);
  }
  var sig = f & 0x7fffffu;
  if ((sig & 0x3fffu) != 0x1000u) { sig = sig + 0x1000u; }
  return sign | (((e - 0x38000000u) >> 13u) + (sig >> 13u));
}

fn half_value(bits: u32) -> f32 {
  return unpack2x16float(bits).x;
}

// One f16 of a pool: element i of the (blocks, KV, BS, D) array.
fn pool_at(k: bool, i: u32) -> f32 {
  var w: u32;
  if (k) { w = kpool[i >> 1u]; } else { w = vpool[i >> 1u]; }
  return unpack2x16float(w)[i & 1u];
}

// round((x - mn) / scale) half up, clamped to [0, qmax], as the CPU's f64 Math.round: floor of
// the f32 quotient, then an exact comparison of x - mn (a two-sum pair) against (f + 0.5) * scale
// (exact: at most 9 + 11 significant bits) decides between f and f + 1.
fn code_of(x: f32, mn: f32, scale: f32, qmax: u32) -> u32 {
  if (scale == 0.0) { return 0u; }
  let s = x - mn;
  let bb = s - x;
  let err = (x - (s - bb)) - (mn + bb);
  let f = floor(s / scale);
  let half = (f + 0.5) * scale;
  var q = f;
  if ((s - half) + err >= 0.0) { q = f + 1.0; }
  return u32(clamp(q, 0.0, f32(qmax)));
}

fn scale_of(lo: f32, hi: f32, qmax: u32) -> u32 {
  if (!(hi > lo)) { return 0u; }
  return half_bits((hi - lo) / f32(qmax));
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let job = jobs[wid.x];
  let kvh = wid.y;
  let KV = p.KV;
  let bits = job.w;
  let per = 32u / bits;
  let qmax = (1u << bits) - 1u;
  let row_words = D / per;
  let code_words = KV * BS * row_words;
  let nb = (job.y + BS - 1u) / BS;
  let k_words = code_words + KV * D;
  let v_words = code_words + KV * BS * (D / GV);
  let groups = D / GV;
  for (var b = 0u; b < nb; b = b + 1u) {
    var phys = job.x + b;
    if (p.wrap > 0u) { phys = phys % p.wrap; }
    let valid = min(BS, job.y - b * BS);
    let row0 = (phys * KV + kvh) * BS;    // the block's first token row of this head in the pool
    let k_base = job.z + b * k_words;
    let v_base = job.z + nb * k_words + b * v_words;
    // Keys: a group per channel over the block's valid tokens.
    for (var c = lid; c < D; c = c + WG) {
      var lo = 3.4e38;
      var hi = -3.4e38;
      var first = true;
      for (var t = 0u; t < valid; t = t + 1u) {
        let x = pool_at(true, (row0 + t) * D + c);
        if (first || x < lo) { lo = x; }
        if (first || x > hi) { hi = x; }
        first = false;
      }
      let sb = scale_of(lo, hi, qmax);
      let mb = half_bits(lo);
      out[k_base + code_words + kvh * D + c] = sb | (mb << 16u);
      kscale[c] = half_value(sb);
      kmin[c] = half_value(mb);
    }
    // Values: a group per token and GV channels (padding slots: scale = min = 0).
    for (var i = lid; i < BS * groups; i = i + WG) {
      let t = i / groups;
      let g0 = (i % groups) * GV;
      var word = 0u;
      var sc = 0.0;
      var mn = 0.0;
      if (t < valid) {
        var lo = pool_at(false, (row0 + t) * D + g0);
        var hi = lo;
        for (var c = g0 + 1u; c < g0 + GV; c = c + 1u) {
          let x = pool_at(false, (row0 + t) * D + c);
          if (x < lo) { lo = x; }
          if (x > hi) { hi = x; }
        }
        let sb = scale_of(lo, hi, qmax);
        let mb = half_bits(lo);
        word = sb | (mb << 16u);
        sc = half_value(sb);
        mn = half_value(mb);
      }
      out[v_base + code_words + (kvh * BS + t) * groups + i % groups] = word;
      vscale[i] = sc;
      vmin[i] = mn;
    }
    workgroupBarrier();
    // Codes: one thread per output word of K and of V.
    for (var i = lid; i < BS * row_words; i = i + WG) {
      let t = i / row_words;
      let w = i % row_words;
      var kw = 0u;
      var vw = 0u;
      if (t < valid) {
        for (var j = 0u; j < per; j = j + 1u) {
          let c = w * per + j;
          let at = (row0 + t) * D + c;
          kw = kw | (code_of(pool_at(true, at), kmin[c], kscale[c], qmax) << (j * bits));
          let g = t * groups + c / GV;
          vw = vw | (code_of(pool_at(false, at), vmin[g], vscale[g], qmax) << (j * bits));
        }
      }
      out[k_base + (kvh * BS + t) * row_words + w] = kw;
      out[v_base + (kvh * BS + t) * row_words + w] = vw;
    }
    workgroupBarrier();
  }
}
