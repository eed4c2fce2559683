// RMSNorm's scale of one row, rsqrt(mean(x^2) + eps), summed by the workgroup (rmsnorm.wgsl,
// half_rows.wgsl): the row is x[base .. base + n4) as vec4, n values. Uses the including
// kernel's x, its workgroup array red (WG entries) and WG; call in workgroup-uniform control flow.
fn row_rms_scale(base: u32, n4: u32, n: u32, eps: f32, lid: u32) -> f32 {
  var ss = 0.0;
  for (var i = lid; i < n4; i = i + WG) {
    let v = x[base + i];
    ss = ss + dot(v, v);
  }
  red[lid] = ss;
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lid < stride) { red[lid] = red[lid] + red[lid + stride]; }
  }
  workgroupBarrier();
  return inverseSqrt(red[0] / f32(n) + eps);
}
