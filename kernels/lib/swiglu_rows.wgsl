// With SWIGLU, W is cat(gate, up) (rows [0, N/2) and [N/2, N)) and logical row L is
// gate row L/2 when L is even, up row L/2 when odd, so (gate_j, up_j) are adjacent.
// Needs a uniform `p` with field N (rows of W).
fn phys(row: u32) -> u32 {
#if SWIGLU
  return select(row / 2u, p.N / 2u + row / 2u, (row & 1u) == 1u);
#else
  return row;
#endif
}
