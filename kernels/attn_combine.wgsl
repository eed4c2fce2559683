// Merges the split partials of attn_decode: out[m, h, :] = sum_s w_s * o_s / sum_s w_s * l_s
// with w_s = exp(max_s - max over splits).
//   part_o: (M, H, stride, D) f32;  part_ml: (M, H, stride) vec2 (max, sum);  out: (M, H, D) f32
// The first S of each row's `stride` partials are merged (stride 0 means S).
struct Params { H: u32, S: u32, D: u32, stride: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part_o: array<f32>;
@group(0) @binding(2) var<storage, read> part_ml: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 64;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.x;
  let m = wid.y;
  let row = m * p.H + h;
  let st = select(p.stride, p.S, p.stride == 0u);
  var mx = -3.0e38;
  for (var s = 0u; s < p.S; s = s + 1u) { mx = max(mx, part_ml[row * st + s].x); }
  var den = 0.0;
  for (var s = 0u; s < p.S; s = s + 1u) {
    let ml = part_ml[row * st + s];
    den = den + exp(ml.x - mx) * ml.y;
  }
  for (var d = lid; d < p.D; d = d + WG) {
    var num = 0.0;
    for (var s = 0u; s < p.S; s = s + 1u) {
      num = num + exp(part_ml[row * st + s].x - mx) * part_o[(row * st + s) * p.D + d];
    }
    out[row * p.D + d] = num / den;
  }
}
