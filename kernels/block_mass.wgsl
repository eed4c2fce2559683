// H2O's accumulated attention, at KV-block granularity: after attn_decode over a layer's
// kept lists, mass[j, block] += sum over the query heads h of list j and the block's tokens t
// of exp(s_ht - M_h) / L_h, the softmax probability of token t for head h, where (M_h, L_h)
// are the step's final softmax stats, merged from the split partials as attn_combine merges
// them. attn_decode keeps no scores, so they are recomputed: one more read of the kept keys.
// Workgroup (e, j, z): entry z * 65535 + e of list j. List j holds the KV heads
// [j * KV / lists, (j + 1) * KV / lists) and their query heads: one list per layer sums every
// head, one list per KV head its query group. Per KV head, a thread takes a (query head,
// token) pair; the G threads on one token read the same key row (one fetch from memory).
//   q:        (H, D) f32 (RoPE applied)
//   kpool:    (blocks, KV, BS, D) f16 packed, read as vec4<u32>
//   entries:  (lists, stride) vec2<u32> (physical block, tokens);  seqs: (lists) vec2<u32> (first, count)
//   part_ml:  (H, S) vec2<f32> (max score, sum of exp) of attn_decode's S splits
//   mass:     (lists, MB) f32 by physical block (each block is listed at most once per list)
struct Params { H: u32, KV: u32, BS: u32, S: u32, lists: u32, MB: u32, scale: f32, pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kpool: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> entries: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> seqs: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> part_ml: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> mass: array<f32>;

override WG: u32 = 64;    // a power of two
override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim, multiple of 8
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, G * D>;          // the KV head's queries, scaled
var<workgroup> stats: array<vec2<f32>, G>;     // their final (max, sum of exp)
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let j = wid.y;
  let e = wid.z * 65535u + wid.x;
  let seq = seqs[j];
  var entry = vec2<u32>(0u, 0u);   // an absent entry has no tokens
  if (e < seq.y) { entry = entries[seq.x + e]; }
  let per_list = p.KV / p.lists;
  let d8 = D / 8u;
  var acc = 0.0;
  for (var kvh = j * per_list; kvh < (j + 1u) * per_list; kvh = kvh + 1u) {
    for (var i = lid; i < G * D; i = i + WG) { qs[i] = q[kvh * G * D + i] * p.scale; }
    if (lid < G) {
      let h = kvh * G + lid;
      var mx = NEG;
      for (var s = 0u; s < p.S; s = s + 1u) { mx = max(mx, part_ml[h * p.S + s].x); }
      var l = 0.0;
      for (var s = 0u; s < p.S; s = s + 1u) {
        let ml = part_ml[h * p.S + s];
        l = l + exp(ml.x - mx) * ml.y;
      }
      stats[lid] = vec2<f32>(mx, l);
    }
    workgroupBarrier();
    for (var t = lid; t < G * p.BS; t = t + WG) {
      let g = t / p.BS;
      let off = t % p.BS;
      if (off < entry.y) {
        // The score as attn_decode computes it: (q * scale) . k, f16 keys widened to f32.
        let kb = ((entry.x * p.KV + kvh) * p.BS + off) * d8;
        var sc = 0.0;
        for (var i = 0u; i < d8; i = i + 1u) {
          let kv = kpool[kb + i];
          let k01 = unpack2x16float(kv.x);
          let k23 = unpack2x16float(kv.y);
          let k45 = unpack2x16float(kv.z);
          let k67 = unpack2x16float(kv.w);
          let qb = g * D + 8u * i;
          sc = sc + qs[qb] * k01.x + qs[qb + 1u] * k01.y + qs[qb + 2u] * k23.x + qs[qb + 3u] * k23.y
                  + qs[qb + 4u] * k45.x + qs[qb + 5u] * k45.y + qs[qb + 6u] * k67.x + qs[qb + 7u] * k67.y;
        }
        acc = acc + exp(sc - stats[g].x) / stats[g].y;
      }
    }
    workgroupBarrier();
  }
  red[lid] = acc;
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) { red[lid] = red[lid] + red[lid + stride]; }
  }
  if (lid == 0u && e < seq.y) {
    let at = j * p.MB + entry.x;
    mass[at] = mass[at] + red[0];
  }
}
