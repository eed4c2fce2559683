// The order in which a GEMV or GEMM walks W's rows: logical row L is physical row phys(L).
// SWIGLU: W is cat(gate, up) (rows [0, N/2) and [N/2, N)) and logical row L is gate row L/2
//   when L is even, up row L/2 when odd, so (gate_j, up_j) are adjacent.
// ROPE (the decode QKV projection with rotation fused): W's rows are heads of D; logical
//   rows come in quads (2i, 2i+1, 2i + D/2, 2i + 1 + D/2) of one head, i < D/4: the
//   element pairs that RoPE's rotate_half mixes and that the f16 KV pool packs in one u32.
// Needs a uniform `p` with field N (rows of W), and with ROPE field D (head dim, D % 4 == 0).
fn phys(row: u32) -> u32 {
#if SWIGLU
  return select(row / 2u, p.N / 2u + row / 2u, (row & 1u) == 1u);
#else
#if ROPE
  let quad = row / 4u;
  let q = row % 4u;
  let head = quad / (p.D / 4u);
  let i = quad % (p.D / 4u);
  return head * p.D + 2u * i + (q & 1u) + (q >> 1u) * (p.D / 2u);
#else
  return row;
#endif
#endif
}
