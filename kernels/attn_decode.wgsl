// Decode attention over a list of KV blocks, split across workgroups (flash-decoding):
// workgroup (split, kv head, query m) attends the G = H/KV query heads of its group over
// the entries [split * EPS, (split + 1) * EPS) of query m's block list, and writes an
// unnormalised partial (running max, sum, weighted values); attn_combine merges splits.
// The tiered cache hands it exactly the chunks it selected, in any order.
//   q:        (M, H, D) f32 (RoPE applied)
//   kpool:    (blocks, KV, BS, D) f16 packed, read as vec4<u32>;  vpool: same, read as u32
//   entries:  (E) vec2<u32> (physical block, tokens used in it)
//   seqs:     (M) vec2<u32> (first entry, entry count) of each query's list; with per_head = 1,
//             (M, KV): one list per query and KV head (sparse selection per head)
//   QUANT:    an entry's y is tokens | bits << 16: bits 0 is an fp16 block as above; 8 or 4 is
//             block x % slot_blocks of quantized slot x / slot_blocks, in kv/quant.ts's layout
//             (K part in kpool, V part in vpool, from word qbase + slot * {k,v}_slot_words,
//             blocks at their own bits' stride); keys and values are dequantized as they are
//             read (code * scale + min in f32), with no other pass and no fp16 copy
//   part_o:   (M, H, S, D) f32;  part_ml: (M, H, S) vec2 (max score, sum of exp); workgroup
//             `split` writes partial s0 + split, so passes over several lists (windows of a
//             tiered cache) fill disjoint partials that one attn_combine merges
//   QFOLD:    (with QUANT) kernels/lib/attn_decode_quant.wgsl instead: the same entries, bindings
//             and partials, the per-block key scales loaded once per tile and the mins folded
//             into a bias, rows read as whole vec4<u32> words, 8 value channels a thread
//             (LEOAM_QUANT_ATTN=fold; bench/attn-decode-quant.ts times both)
#if QFOLD
#include lib/attn_decode_quant.wgsl
#else
struct Params {
  H: u32, KV: u32, BS: u32, EPS: u32, S: u32, scale: f32, per_head: u32, s0: u32,
#if QUANT
  qbase: u32, slot_blocks: u32, k_slot_words: u32, v_slot_words: u32,
#endif
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kpool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vpool: array<u32>;
@group(0) @binding(4) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> seqs: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(7) var<storage, read_write> part_ml: array<vec2<f32>>;

override WG: u32 = 256;   // token slots per tile; BS divides WG, D/2 divides WG, WG/(D/2) * VB <= WG
override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim, multiple of 8
const MAX_G: u32 = 8u;
// Value loads in flight per thread in phase 2: 16 with V16 (needs D % 32 == 0), else 8.
#if V16
const VB: u32 = 16u;
#else
const VB: u32 = 8u;
#endif
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, G * D>;
var<workgroup> sc: array<f32, G * WG>;
var<workgroup> red: array<f32, 2u * G * WG>;
// Per token slot of the tile: the u32 offset of its V row in vpool (0 when the slot is
// empty, its weight then being 0), so that phase 2 issues independent loads.
var<workgroup> vrow: array<u32, WG>;
#if QUANT
// Per token slot: its bits (0: fp16 row at vrow) and, when quantized, the word of its V params.
var<workgroup> vbits: array<u32, WG>;
var<workgroup> vpar: array<u32, WG>;

fn kword(w: u32) -> u32 {
  let v = kpool[w >> 2u];
  return v[w & 3u];
}

// Adds the dot products of a quantized key row (codes from word krow, per-channel
// (scale, min) f16 pairs from word kpar) with the G query heads to s.
fn add_scores_q(s: ptr<function, array<f32, MAX_G>>, krow: u32, kpar: u32, bits: u32) {
  let per = 32u / bits;
  let mask = (1u << bits) - 1u;
  for (var w = 0u; w < D / per; w = w + 1u) {
    let word = kword(krow + w);
    for (var j = 0u; j < per; j = j + 1u) {
      let c = w * per + j;
      let sm = unpack2x16float(kword(kpar + c));
      let k = f32((word >> (j * bits)) & mask) * sm.x + sm.y;
      for (var g = 0u; g < G; g = g + 1u) { (*s)[g] = (*s)[g] + qs[g * D + c] * k; }
    }
  }
}
#endif

// The value pair (2 dp, 2 dp + 1) of token slot t.
fn load_v(t: u32, dp: u32) -> vec2<f32> {
#if QUANT
  let bits = vbits[t];
  if (bits != 0u) {
    let per = 32u / bits;
    let c = 2u * dp;
    let word = vpool[vrow[t] + c / per];
    let sh = (c % per) * bits;
    let mask = (1u << bits) - 1u;
    let sm = unpack2x16float(vpool[vpar[t] + c / min(32u, D)]);
    return vec2<f32>(f32((word >> sh) & mask), f32((word >> (sh + bits)) & mask)) * sm.x + sm.y;
  }
#endif
  return unpack2x16float(vpool[vrow[t] + dp]);
}

// Reduces red[g * WG + i] over i for every g < G, by max or by sum; result in red[g * WG].
fn reduce(lid: u32, by_max: bool) {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) {
      for (var g = 0u; g < G; g = g + 1u) {
        let a = red[g * WG + lid];
        let b = red[g * WG + lid + stride];
        red[g * WG + lid] = select(a + b, max(a, b), by_max);
      }
    }
  }
  workgroupBarrier();
}

// Adds the dot products of key vec4 i (8 halves) with the G query heads to s.
fn add_scores(s: ptr<function, array<f32, MAX_G>>, kv: vec4<u32>, i: u32) {
  let k01 = unpack2x16float(kv.x);
  let k23 = unpack2x16float(kv.y);
  let k45 = unpack2x16float(kv.z);
  let k67 = unpack2x16float(kv.w);
  for (var g = 0u; g < G; g = g + 1u) {
    let qb = g * D + 8u * i;
    (*s)[g] = (*s)[g] + qs[qb] * k01.x + qs[qb + 1u] * k01.y + qs[qb + 2u] * k23.x + qs[qb + 3u] * k23.y
                      + qs[qb + 4u] * k45.x + qs[qb + 5u] * k45.y + qs[qb + 6u] * k67.x + qs[qb + 7u] * k67.y;
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let split = wid.x;
  let kvh = wid.y;
  let m = wid.z;
  let seq = seqs[select(m, m * p.KV + kvh, p.per_head == 1u)];
  let end = seq.x + seq.y;
  let e0 = min(seq.x + split * p.EPS, end);
  let e1 = min(e0 + p.EPS, end);
  let half_d = D / 2u;
  let d8 = D / 8u;

  for (var i = lid; i < G * D; i = i + WG) {
    qs[i] = q[(m * p.H + kvh * G) * D + i] * p.scale;
  }
  workgroupBarrier();

  var mrun: array<f32, MAX_G>;
  var lsum: array<f32, MAX_G>;
  var acc: array<vec2<f32>, MAX_G>;
  var alpha: array<f32, MAX_G>;
  for (var g = 0u; g < MAX_G; g = g + 1u) { mrun[g] = NEG; lsum[g] = 0.0; acc[g] = vec2<f32>(0.0); }
  let dp = lid % half_d;
  let tg = lid / half_d;
  let ntg = WG / half_d;
  let tile_entries = WG / p.BS;

  for (var et = e0; et < e1; et = et + tile_entries) {
    // Phase 1: one token slot per thread, scores for all G heads.
    let e = et + lid / p.BS;
    let off = lid % p.BS;
    var valid = false;
    var s: array<f32, MAX_G>;
    for (var g = 0u; g < G; g = g + 1u) { s[g] = 0.0; }
#if QUANT
    var bits = 0u;
    if (e < e1) {
      let y = entries[e].y;
      valid = off < (y & 0xffffu);
      bits = y >> 16u;
    }
    if (!valid) { bits = 0u; }
    vbits[lid] = bits;
    vrow[lid] = 0u;
    if (valid && bits != 0u) {
      let qb = entries[e].x;
      let slot = qb / p.slot_blocks;
      let blk = qb % p.slot_blocks;
      let cw = p.KV * p.BS * D * bits / 32u; // code words of one block's K or V part
      let rw = D * bits / 32u;               // code words of one token row
      let kb = p.qbase + slot * p.k_slot_words + blk * (cw + p.KV * D);
      let vb = p.qbase + slot * p.v_slot_words + blk * (cw + p.KV * p.BS * (D / min(32u, D)));
      add_scores_q(&s, kb + (kvh * p.BS + off) * rw, kb + cw + kvh * D, bits);
      vrow[lid] = vb + (kvh * p.BS + off) * rw;
      vpar[lid] = vb + cw + (kvh * p.BS + off) * (D / min(32u, D));
    } else if (valid) {
      let row = (entries[e].x * p.KV + kvh) * p.BS + off;
      vrow[lid] = row * half_d;
      let kb = row * d8;
      for (var i = 0u; i < d8; i = i + 1u) { add_scores(&s, kpool[kb + i], i); }
    }
#else
    if (e < e1) { valid = off < entries[e].y; }
    var row = 0u;
    if (valid) {
      row = (entries[e].x * p.KV + kvh) * p.BS + off;
    }
    vrow[lid] = row * half_d;
    if (valid) {
      let kb = row * d8;
      for (var i = 0u; i < d8; i = i + 1u) { add_scores(&s, kpool[kb + i], i); }
    }
#endif
    for (var g = 0u; g < G; g = g + 1u) {
      let v = select(NEG, s[g], valid);
      sc[g * WG + lid] = v;
      red[g * WG + lid] = v;
    }
    reduce(lid, true);
    for (var g = 0u; g < G; g = g + 1u) {
      let mnew = max(mrun[g], red[g * WG]);
      alpha[g] = exp(mrun[g] - mnew);
      mrun[g] = mnew;
    }
    for (var g = 0u; g < G; g = g + 1u) {
      let pv = select(0.0, exp(sc[g * WG + lid] - mrun[g]), valid);
      sc[g * WG + lid] = pv;
      lsum[g] = lsum[g] * alpha[g] + pv;
      acc[g] = acc[g] * alpha[g];
    }
    workgroupBarrier();
    // Phase 2: thread (token group tg, element pair dp) accumulates values.
    // Empty slots have weight 0 and point at row 0, so there is no branch on loaded data;
    // VB slots at a time so that VB loads are in flight (WG / ntg = D / 2 is a multiple of VB).
    for (var t0 = tg; t0 < WG; t0 = t0 + VB * ntg) {
      var vv: array<vec2<f32>, VB>;
      for (var j = 0u; j < VB; j = j + 1u) { vv[j] = load_v(t0 + j * ntg, dp); }
      for (var j = 0u; j < VB; j = j + 1u) {
        let t = t0 + j * ntg;
        for (var g = 0u; g < G; g = g + 1u) {
          acc[g] = acc[g] + sc[g * WG + t] * vv[j];
        }
      }
    }
    workgroupBarrier();
  }

  for (var g = 0u; g < G; g = g + 1u) { red[g * WG + lid] = lsum[g]; }
  reduce(lid, false);
  var ltot: array<f32, MAX_G>;
  for (var g = 0u; g < G; g = g + 1u) { ltot[g] = red[g * WG]; }
  workgroupBarrier();
  for (var g = 0u; g < G; g = g + 1u) {
    red[(tg * G + g) * D + 2u * dp] = acc[g].x;
    red[(tg * G + g) * D + 2u * dp + 1u] = acc[g].y;
  }
  workgroupBarrier();
  if (tg == 0u) {
    for (var g = 0u; g < G; g = g + 1u) {
      var o = vec2<f32>(0.0);
      for (var j = 0u; j < ntg; j = j + 1u) {
        o = o + vec2<f32>(red[(j * G + g) * D + 2u * dp], red[(j * G + g) * D + 2u * dp + 1u]);
      }
      let ob = ((m * p.H + kvh * G + g) * p.S + p.s0 + split) * D + 2u * dp;
      part_o[ob] = o.x;
      part_o[ob + 1u] = o.y;
    }
  }
  if (lid < G) {
    part_ml[(m * p.H + kvh * G + lid) * p.S + p.s0 + split] = vec2<f32>(mrun[lid], ltot[lid]);
  }
}
#endif
