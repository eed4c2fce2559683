// attn_decode's QUANT + QFOLD variant (attn_decode.wgsl includes it): the same flash-decoding split,
// bindings, uniform and partials, over a list whose entries are fp16 blocks or int8/int4 blocks
// of quantized slots (kv/quant.ts's layout), dequantized as they are read (no other pass, no
// fp16 copy). An entry's y is tokens | bits << 16: bits 0 is an fp16 block of the pools; 8 or 4
// is block x % slot_blocks of quantized slot x / slot_blocks (K part in kpool, V part in vpool,
// from word qbase + slot * {k,v}_slot_words, blocks at their own bits' stride).
//
// How it reads, and why (the first form, one thread per token reading every key channel's
// (scale, min) per token and a value u32 per channel pair, ran 2.3x slower than fp16 on an H100
// although it reads 4x fewer bytes; bench/attn-decode-quant.ts times both):
//   keys: a block's D (scale, min) pairs are shared by its BS tokens (KIVI: keys per channel).
//     Before a tile's scores the BS threads of each entry load them once, coalesced (vec4 =
//     4 channels), keep the scales in workgroup memory (ksc) and fold the mins into one bias per
//     query head: score = sum_c q_c * (code_c * scale_c) + sum_c q_c * min_c. A thread per token
//     then reads its row as vec4<u32> words of packed codes (32 int4 or 16 int8 channels) and
//     does 4 channels per vec4 operation against the query (qs, 4 channels a vec4).
//   values: (scale, min) per token and group of GV channels. Thread (token group tg, channel
//     octet cc) reads per token one u32 of int4 codes (two of int8, four of an fp16 row) and its
//     group's (scale, min) once, dequantizes 8 channels and adds them to all G heads; VQ tokens'
//     loads are issued before their arithmetic.
// Requirements: D a multiple of 8 (of 32 above 32), D / 8 and BS dividing WG, BS = p.BS (the
// override sizes the per-entry arrays; a mismatch writes NaN partials), every slot and block
// base a multiple of 4 words (kv/quant.ts's layout at BS 16 gives it).
struct Params {
  H: u32, KV: u32, BS: u32, EPS: u32, S: u32, scale: f32, per_head: u32, s0: u32,
  qbase: u32, slot_blocks: u32, k_slot_words: u32, v_slot_words: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kpool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vpool: array<u32>;
@group(0) @binding(4) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> seqs: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> part_o: array<f32>;
@group(0) @binding(7) var<storage, read_write> part_ml: array<vec2<f32>>;

override WG: u32 = 256;   // token slots per tile
override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim
override BS: u32 = 16;    // tokens per block (must equal p.BS)
const MAX_G: u32 = 8u;
// Tokens whose value loads one thread issues before using them: 4 with V16 (D % 32 == 0,
// so D / 8 tokens a thread per tile is a multiple of 4), else 1.
#if V16
const VQ: u32 = 4u;
#else
const VQ: u32 = 1u;
#endif
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, G * D / 4u>;   // (G, D) scaled query, 4 channels a vec4
var<workgroup> sc: array<f32, G * WG>;
var<workgroup> red: array<f32, 2u * G * WG>;
// Per token slot of the tile: its bits (0: fp16 row, or empty with weight 0), the u32 offset
// of its V row, and (quantized) the word of its V params.
var<workgroup> vrow: array<u32, WG>;
var<workgroup> vbits: array<u32, WG>;
var<workgroup> vpar: array<u32, WG>;
// Per entry of the tile: its key scales (D / 4 vec4, rows padded by one vec4 so that two
// entries read by one subgroup fall in other banks) and per head the bias sum_c q_c * min_c.
var<workgroup> ksc: array<vec4<f32>, (WG / BS) * (D / 4u + 1u)>;
var<workgroup> kbias: array<f32, (WG / BS) * G>;

fn kword(w: u32) -> u32 {
  let v = kpool[w >> 2u];
  return v[w & 3u];
}

// int4 codes of channels 0-3 and 4-7 of a word (channel c at bits 4c).
fn nibbles_lo(w: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}
fn nibbles_hi(w: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
}
// int8 codes of a word's 4 channels (channel c at bits 8c).
fn bytes4(w: u32) -> vec4<f32> {
  return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
}

// Adds q . (codes * scales) over the 4 channels of quad c4 of entry j to every head's score.
fn add_quad(s: ptr<function, array<f32, MAX_G>>, codes: vec4<f32>, j: u32, c4: u32) {
  let k = codes * ksc[j * (D / 4u + 1u) + c4];
  for (var g = 0u; g < G; g = g + 1u) { (*s)[g] = (*s)[g] + dot(qs[g * (D / 4u) + c4], k); }
}

// Scores (less the bias) of the quantized key row at word krow of entry j: vec4 words where
// the row's words are a multiple of 4, else word by word.
fn add_scores_q(s: ptr<function, array<f32, MAX_G>>, krow: u32, j: u32, bits: u32) {
  if (bits == 4u) {
    if (D % 32u == 0u) {
      for (var w4 = 0u; w4 < D / 32u; w4 = w4 + 1u) {
        let v = kpool[(krow >> 2u) + w4];
        for (var k = 0u; k < 4u; k = k + 1u) {
          add_quad(s, nibbles_lo(v[k]), j, w4 * 8u + 2u * k);
          add_quad(s, nibbles_hi(v[k]), j, w4 * 8u + 2u * k + 1u);
        }
      }
    } else {
      for (var w = 0u; w < D / 8u; w = w + 1u) {
        let word = kword(krow + w);
        add_quad(s, nibbles_lo(word), j, 2u * w);
        add_quad(s, nibbles_hi(word), j, 2u * w + 1u);
      }
    }
  } else {
    if (D % 16u == 0u) {
      for (var w4 = 0u; w4 < D / 16u; w4 = w4 + 1u) {
        let v = kpool[(krow >> 2u) + w4];
        for (var k = 0u; k < 4u; k = k + 1u) { add_quad(s, bytes4(v[k]), j, w4 * 4u + k); }
      }
    } else {
      for (var w = 0u; w < D / 4u; w = w + 1u) { add_quad(s, bytes4(kword(krow + w)), j, w); }
    }
  }
}

// Adds the dot products of fp16 key vec4 i (channels 8i .. 8i + 7) with the G query heads to s.
fn add_scores(s: ptr<function, array<f32, MAX_G>>, kv: vec4<u32>, i: u32) {
  let k0 = vec4<f32>(unpack2x16float(kv.x), unpack2x16float(kv.y));
  let k1 = vec4<f32>(unpack2x16float(kv.z), unpack2x16float(kv.w));
  for (var g = 0u; g < G; g = g + 1u) {
    (*s)[g] = (*s)[g] + dot(qs[g * (D / 4u) + 2u * i], k0) + dot(qs[g * (D / 4u) + 2u * i + 1u], k1);
  }
}

// The raw words of token slot t's channel octet cc: int4 (codes, params), int8 (codes, codes,
// params), fp16 (four words of halves).
fn load_v(t: u32, cc: u32) -> vec4<u32> {
  let bits = vbits[t];
  let row = vrow[t];
  if (bits == 4u) {
    return vec4<u32>(vpool[row + cc], vpool[vpar[t] + 8u * cc / min(32u, D)], 0u, 0u);
  }
  if (bits == 8u) {
    return vec4<u32>(vpool[row + 2u * cc], vpool[row + 2u * cc + 1u], vpool[vpar[t] + 8u * cc / min(32u, D)], 0u);
  }
  let b = row + 4u * cc;
  return vec4<u32>(vpool[b], vpool[b + 1u], vpool[b + 2u], vpool[b + 3u]);
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

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let split = wid.x;
  let kvh = wid.y;
  let m = wid.z;
  if (p.BS != BS) {
    // Pipeline built for another block size: fail loudly (NaN partials), not quietly.
    if (lid < G) { part_ml[(m * p.H + kvh * G + lid) * p.S + p.s0 + split] = vec2<f32>(bitcast<f32>(0x7fc00000u | (p.BS & 1u))); }
    return;
  }
  let seq = seqs[select(m, m * p.KV + kvh, p.per_head == 1u)];
  let end = seq.x + seq.y;
  let e0 = min(seq.x + split * p.EPS, end);
  let e1 = min(e0 + p.EPS, end);
  let d4 = D / 4u;
  let d8 = D / 8u;
  let gv = min(32u, D);

  for (var i = lid; i < G * d4; i = i + WG) {
    let b = (m * p.H + kvh * G) * D + 4u * i;
    qs[i] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * p.scale;
  }
  workgroupBarrier();

  var mrun: array<f32, MAX_G>;
  var lsum: array<f32, MAX_G>;
  var acc0: array<vec4<f32>, MAX_G>;   // channels 8 cc .. 8 cc + 3 of each head
  var acc1: array<vec4<f32>, MAX_G>;   // channels 8 cc + 4 .. 8 cc + 7
  var alpha: array<f32, MAX_G>;
  for (var g = 0u; g < MAX_G; g = g + 1u) { mrun[g] = NEG; lsum[g] = 0.0; acc0[g] = vec4<f32>(0.0); acc1[g] = vec4<f32>(0.0); }
  let cc = lid % d8;
  let tg = lid / d8;
  let ntg = WG / d8;
  let tile_entries = WG / BS;
  // Thread lid's token slot in a tile: offset `off` of the tile's entry j.
  let j = lid / BS;
  let off = lid % BS;

  for (var et = e0; et < e1; et = et + tile_entries) {
    let e = et + j;
    var ent = vec2<u32>(0u);
    if (e < e1) { ent = entries[e]; }
    let ebits = ent.y >> 16u;
    let valid = e < e1 && off < (ent.y & 0xffffu);
    let bits = select(0u, ebits, valid);
    // Entry j's K params, once for its BS tokens: thread off loads channel quads off, off + BS, ...
    var bias: array<f32, MAX_G>;
    for (var g = 0u; g < G; g = g + 1u) { bias[g] = 0.0; }
    let slot = ent.x / p.slot_blocks;
    let blk = ent.x % p.slot_blocks;
    let cw = p.KV * BS * D * ebits / 32u;   // code words of one block's K or V part
    let rw = D * ebits / 32u;               // code words of one token row
    let kb = p.qbase + slot * p.k_slot_words + blk * (cw + p.KV * D);
    if (ebits != 0u) {
      let kp4 = (kb + cw + kvh * D) >> 2u;
      for (var c4 = off; c4 < d4; c4 = c4 + BS) {
        let w = kpool[kp4 + c4];
        let a = unpack2x16float(w.x);
        let b = unpack2x16float(w.y);
        let c = unpack2x16float(w.z);
        let d = unpack2x16float(w.w);
        ksc[j * (d4 + 1u) + c4] = vec4<f32>(a.x, b.x, c.x, d.x);
        let mn = vec4<f32>(a.y, b.y, c.y, d.y);
        for (var g = 0u; g < G; g = g + 1u) { bias[g] = bias[g] + dot(qs[g * d4 + c4], mn); }
      }
    }
    for (var g = 0u; g < G; g = g + 1u) { red[g * WG + lid] = bias[g]; }
    workgroupBarrier();
    for (var i = lid; i < tile_entries * G; i = i + WG) {
      let jj = i / G;
      let g = i % G;
      var sum = 0.0;
      for (var x = 0u; x < BS; x = x + 1u) { sum = sum + red[g * WG + jj * BS + x]; }
      kbias[i] = sum;
    }
    workgroupBarrier();

    // Phase 1: one token slot per thread, scores for all G heads.
    var s: array<f32, MAX_G>;
    for (var g = 0u; g < G; g = g + 1u) { s[g] = 0.0; }
    vbits[lid] = bits;
    vrow[lid] = 0u;
    vpar[lid] = 0u;
    if (bits != 0u) {
      let vb = p.qbase + slot * p.v_slot_words + blk * (cw + p.KV * BS * (D / gv));
      add_scores_q(&s, kb + (kvh * BS + off) * rw, j, bits);
      for (var g = 0u; g < G; g = g + 1u) { s[g] = s[g] + kbias[j * G + g]; }
      vrow[lid] = vb + (kvh * BS + off) * rw;
      vpar[lid] = vb + cw + (kvh * BS + off) * (D / gv);
    } else if (valid) {
      let row = (ent.x * p.KV + kvh) * BS + off;
      vrow[lid] = row * (D / 2u);
      let kr = row * d8;
      for (var i = 0u; i < d8; i = i + 1u) { add_scores(&s, kpool[kr + i], i); }
    }
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
      acc0[g] = acc0[g] * alpha[g];
      acc1[g] = acc1[g] * alpha[g];
    }
    workgroupBarrier();
    // Phase 2: thread (tg, cc) accumulates channels 8 cc .. 8 cc + 7 over token slots tg,
    // tg + ntg, ...; empty slots have weight 0 and read fp16 row 0.
    for (var t0 = tg; t0 < WG; t0 = t0 + VQ * ntg) {
      var raw: array<vec4<u32>, VQ>;
      for (var u = 0u; u < VQ; u = u + 1u) { raw[u] = load_v(t0 + u * ntg, cc); }
      for (var u = 0u; u < VQ; u = u + 1u) {
        let t = t0 + u * ntg;
        let vbt = vbits[t];
        let r = raw[u];
        var v0: vec4<f32>;
        var v1: vec4<f32>;
        if (vbt == 4u) {
          let sm = unpack2x16float(r.y);
          v0 = nibbles_lo(r.x) * sm.x + sm.y;
          v1 = nibbles_hi(r.x) * sm.x + sm.y;
        } else if (vbt == 8u) {
          let sm = unpack2x16float(r.z);
          v0 = bytes4(r.x) * sm.x + sm.y;
          v1 = bytes4(r.y) * sm.x + sm.y;
        } else {
          v0 = vec4<f32>(unpack2x16float(r.x), unpack2x16float(r.y));
          v1 = vec4<f32>(unpack2x16float(r.z), unpack2x16float(r.w));
        }
        for (var g = 0u; g < G; g = g + 1u) {
          let w = sc[g * WG + t];
          acc0[g] = acc0[g] + w * v0;
          acc1[g] = acc1[g] + w * v1;
        }
      }
    }
    workgroupBarrier();
  }

  for (var g = 0u; g < G; g = g + 1u) { red[g * WG + lid] = lsum[g]; }
  reduce(lid, false);
  var ltot: array<f32, MAX_G>;
  for (var g = 0u; g < G; g = g + 1u) { ltot[g] = red[g * WG]; }
  // The token groups' accumulators, summed by group 0 through red, R groups at a time.
  let R = 2u * WG / D;
  var o0: array<vec4<f32>, MAX_G>;
  var o1: array<vec4<f32>, MAX_G>;
  for (var g = 0u; g < G; g = g + 1u) { o0[g] = vec4<f32>(0.0); o1[g] = vec4<f32>(0.0); }
  for (var r = 0u; r < ntg; r = r + R) {
    workgroupBarrier();
    if (tg >= r && tg < r + R) {
      for (var g = 0u; g < G; g = g + 1u) {
        let b = ((tg - r) * G + g) * D + 8u * cc;
        for (var i = 0u; i < 4u; i = i + 1u) { red[b + i] = acc0[g][i]; red[b + 4u + i] = acc1[g][i]; }
      }
    }
    workgroupBarrier();
    if (tg == 0u) {
      for (var x = 0u; x < R; x = x + 1u) {
        for (var g = 0u; g < G; g = g + 1u) {
          let b = (x * G + g) * D + 8u * cc;
          o0[g] = o0[g] + vec4<f32>(red[b], red[b + 1u], red[b + 2u], red[b + 3u]);
          o1[g] = o1[g] + vec4<f32>(red[b + 4u], red[b + 5u], red[b + 6u], red[b + 7u]);
        }
      }
    }
  }
  if (tg == 0u) {
    for (var g = 0u; g < G; g = g + 1u) {
      let ob = ((m * p.H + kvh * G + g) * p.S + p.s0 + split) * D + 8u * cc;
      for (var i = 0u; i < 4u; i = i + 1u) { part_o[ob + i] = o0[g][i]; part_o[ob + 4u + i] = o1[g][i]; }
    }
  }
  if (lid < G) {
    part_ml[(m * p.H + kvh * G + lid) * p.S + p.s0 + split] = vec2<f32>(mrun[lid], ltot[lid]);
  }
}
