// The store of a prefill GEMM (gemm.wgsl, gemm_reg.wgsl): row m's four output columns n..n+3
// (n a multiple of 4) with the bias added, then either written, or as (gate, up) pairs
// through SwiGLU into column n/2, each written or added (ACC) into y. Uses the including
// kernel's p (M, N), y, bias and phys.
fn store_quad(m: u32, n: u32, sum: vec4<f32>) {
  var v = sum;
#if BIAS
  for (var c = 0u; c < 4u; c = c + 1u) { if (n + c < p.N) { v[c] = v[c] + bias[phys(n + c)]; } }
#endif
#if SWIGLU
  // columns (n, n+1) and (n+2, n+3) are (gate, up) pairs; n is a multiple of 4
  let half_n = p.N / 2u;
  for (var c = 0u; c < 4u; c = c + 2u) {
    if (n + c + 1u < p.N) {
      let g = v[c];
      let u = v[c + 1u];
      let idx = m * half_n + (n + c) / 2u;
      let out = g / (1.0 + exp(-g)) * u;
#if ACC
      y[idx] = y[idx] + out;
#else
      y[idx] = out;
#endif
    }
  }
#else
  for (var c = 0u; c < 4u; c = c + 1u) {
    if (n + c < p.N) {
      let idx = m * p.N + n + c;
#if ACC
      y[idx] = y[idx] + v[c];
#else
      y[idx] = v[c];
#endif
    }
  }
#endif
}
