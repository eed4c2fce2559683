// Token choice on the GPU with one u32 read back: argmax over the logits, or with GUMBEL
// a sample from softmax(logits / temperature) by the Gumbel-max trick, its noise from a
// counter-based hash of (seed, step, token) so that a seed reproduces a run exactly.
// Pass FINAL=false: each workgroup reduces a slice to (value, index) in part;
// pass FINAL=true: one workgroup reduces part to the chosen id, written to ids[out_slot].
//   logits: (V) f32;  part: (groups) vec2<f32> (value, bitcast index);  ids: (slots) u32
// With ROWS, every row of a decode batch in one dispatch (workgroup y = row), each with its
// own (seed, step, temperature) from rows[]: the same slices, noise and reductions as the
// row alone, so a row's token does not depend on its batch-mates. Then logits: (rows, V);
// part: (rows, groups); ids: (rows) u32, row r's token at ids[r] (out_slot unused).
struct Params { V: u32, groups: u32, out_slot: u32, seed: u32, step: u32, inv_temp: f32, _a: u32, _b: u32 }
// One row's sampling: Gumbel-max where gumbel != 0, else argmax.
struct Row { seed: u32, step: u32, inv_temp: f32, gumbel: u32 }
@group(0) @binding(0) var<uniform> p: Params;
#if FINAL
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;
#else
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<vec2<f32>>;
#if ROWS
@group(0) @binding(4) var<storage, read> rows: array<Row>;
#endif
#endif

override WG: u32 = 256;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// 23 bits: (k + 0.5) / 2^23 is exact in f32 and strictly inside (0, 1), so the noise is finite.
fn gumbel_u(seed: u32, step: u32, i: u32) -> f32 {
  let h = pcg(pcg(pcg(seed) ^ step) ^ i);
  return (f32(h >> 9u) + 0.5) / 8388608.0;
}

fn score(row: u32, i: u32) -> f32 {
#if FINAL
  return 0.0;
#else
#if ROWS
  let r = rows[row];
  let l = logits[row * p.V + i];
  if (r.gumbel != 0u) {
    let u = gumbel_u(r.seed, r.step, i);
    return l * r.inv_temp - log(-log(u));
  }
  return l;
#else
#if GUMBEL
  let u = gumbel_u(p.seed, p.step, i);
  return logits[i] * p.inv_temp - log(-log(u));
#else
  return logits[i];
#endif
#endif
#endif
}

// Ties go to the lower index, as torch.argmax does.
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
  return v > w || (v == w && i < j);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  var bv = -3.4e38;
  var bi = 0xffffffffu;
  // The row of a batch (ROWS; 0 otherwise): its slice of part.
  let row = wid.y;
  let base = row * p.groups;
#if FINAL
  for (var g = lid; g < p.groups; g = g + WG) {
    let c = part[base + g];
    let ci = bitcast<u32>(c.y);
    if (better(c.x, ci, bv, bi)) { bv = c.x; bi = ci; }
  }
#else
  let per = (p.V + p.groups - 1u) / p.groups;
  let start = wid.x * per;
  let stop = min(start + per, p.V);
  for (var i = start + lid; i < stop; i = i + WG) {
    let v = score(row, i);
    if (better(v, i, bv, bi)) { bv = v; bi = i; }
  }
#endif
  best_v[lid] = bv;
  best_i[lid] = bi;
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride && better(best_v[lid + stride], best_i[lid + stride], best_v[lid], best_i[lid])) {
      best_v[lid] = best_v[lid + stride];
      best_i[lid] = best_i[lid + stride];
    }
  }
  workgroupBarrier();
  if (lid == 0u) {
#if FINAL
#if ROWS
    ids[row] = best_i[0];
#else
    ids[p.out_slot] = best_i[0];
#endif
#else
    part[base + wid.x] = vec2<f32>(best_v[0], bitcast<f32>(best_i[0]));
#endif
  }
}
