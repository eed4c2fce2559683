// Embedding gather: x[m, :] = f32(table[ids[m], :]) for the ids that fall in this shard.
//   table: (rows, H) f16 packed in u32 pairs; a shard holds rows [row_start, row_start + rows)
//   ids:   u32, row m's id at ids[id_offset + m];  x: (M, H) f32, written as vec2 per thread
struct Params { H: u32, row_start: u32, rows: u32, M: u32, id_offset: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<vec2<f32>>;

override WG: u32 = 256;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let m = wid.y;
  let j = gid.x;                 // index of a half pair within the row
  let half_h = p.H / 2u;
  if (j >= half_h || m >= p.M) { return; }
  let id = ids[p.id_offset + m];
  if (id < p.row_start || id >= p.row_start + p.rows) { return; }
  x[m * half_h + j] = unpack2x16float(table[(id - p.row_start) * half_h + j]);
}
