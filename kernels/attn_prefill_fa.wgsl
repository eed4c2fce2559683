// Causal prefill attention on the GPU's matrix units with the keys split among the subgroups
// of a workgroup (flash attention with a split key loop): the contract, bindings and WINDOW
// mode of attn_prefill.wgsl (lib/attn_prefill_io.wgsl, K and V read as halves: the key sets
// KDIRECT). attn_prefill_mx gives each subgroup its own 16 rows, so an 8B chunk of 512 queries
// is 1024 subgroups, about 8 a streaming multiprocessor on an H100: too few to hide the
// latency of its serial softmax (10-13 TFLOPS, bench/results/2026-12-07-late-gpu-session).
// Here a workgroup owns ROWS = 16 RT rows (query, head-in-group) of one kv head; its NSG
// subgroups are RT row tiles times KSPLIT = NSG / RT key splits: subgroup sg takes row tile
// sg % RT and the key tiles sg / RT, sg / RT + KSPLIT, ... of BK = 64 keys (32 with the flag
// BK32: half the score registers and workgroup memory, twice the barriers), each split with
// its own online softmax state (m, l, O), merged once at the end through workgroup memory.
// The same chunk is then KSPLIT times as many subgroups. Per tile a subgroup computes its
// 16 x 64 scores on the matrix units (Q staged once as f16, pre-scaled; K as matrices straight
// from the pool), all 32 lanes run the softmax (lane l: row l % 16, keys 2 j + l / 16, the two
// halves of a row joined by one shuffle), and O += P V runs on the matrix units, f16 P, f32
// accumulators in registers for the whole pass.
// As in attn_prefill_mx: the softmax is lazy (P against a reference max m that moves, and O is
// rescaled through workgroup memory, only when a tile's max passes m by TAU), O is eight named
// accumulators under `if (D > 16 i)` (an indexed array gave NaN on an H100), matrix offsets
// derive from subgroup_id and loop counters only, and every workgroup variable is a multiple of
// 16 bytes, the flag first (a 4-byte u32 beside the matrix arrays corrupted every matrix load
// and store on an H100, driver 580.159). Needs subgroups of exactly 32 lanes (SG).
enable f16;
enable chromium_experimental_subgroup_matrix;
// Matrix offsets come from the split (subgroup-uniform, not workgroup-uniform) and from the
// block table (a storage load): uniform within a subgroup, which the analysis cannot see.
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, subgroup_uniformity);

#include lib/attn_prefill_io.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
override SG: u32 = 32u;   // lanes per subgroup: 32
override NSG: u32 = 4u;   // subgroups per workgroup
override RT: u32 = 1u;    // row tiles of 16 rows per workgroup (divides NSG)
#if BK32
const BK: u32 = 32u;      // keys per tile
#else
const BK: u32 = 64u;      // keys per tile
#endif
const NEG: f32 = -3.0e38;
const TAU: f32 = 8.0;     // how far a tile's max may pass the reference max before O is rescaled

override KSPLIT: u32 = NSG / RT;     // subgroups sharing a row tile, each with its own keys
override ROWS: u32 = 16u * RT;
override LD: u32 = D + 8u;           // row stride of qs (halves)
override SLD: u32 = BK + 4u;         // row stride of a subgroup's scores in ss (f32)
override PLD: u32 = BK + 8u;         // row stride of a subgroup's probabilities in ps (halves)
override QS_SIZE: u32 = ROWS * LD;
override SS_SIZE: u32 = NSG * 16u * SLD;
override PS_SIZE: u32 = NSG * 16u * PLD;
override NR: u32 = NSG * 16u;

var<workgroup> flag: vec4<u32>;           // [t % 2]: some row moved its reference max in tile step t
var<workgroup> qs: array<f16, QS_SIZE>;   // (ROWS, LD): the rows' queries * scale
var<workgroup> ss: array<f32, SS_SIZE>;   // per subgroup (16, SLD): scores; also a 16 x 16 scratch
var<workgroup> ps: array<f16, PS_SIZE>;   // per subgroup (16, PLD): probabilities
var<workgroup> row_f: array<f32, NR>;     // per subgroup row: this tile's rescale factor; at the end m, then O's factor
var<workgroup> row_l: array<f32, NR>;     // per subgroup row, at the end: l

// The first column of output block b (< D / 16): Dawn checks constant matrix offsets against
// the array's size even in the dead branches past D (see attn_prefill_mx).
fn v_col(b: u32) -> u32 { return min(b, D / 16u - 1u) * 16u; }

// The first f16 of the K (and V) rows of the 16 keys from `pos` (a multiple of 16: a block holds
// them, BS being a multiple of 16), or for keys wholly past kend those of the last visible 16:
// pool data either way (finite, inside the window), masked to P = 0.
fn kv_rows(pos: u32, kend: u32, kvh: u32) -> u32 {
  let at = min(pos, ((kend - 1u) / 16u) * 16u);
  return ((table[at / p.BS] * p.KV + kvh) * p.BS + at % p.BS) * D;
}

// O's rescale through this subgroup's scratch (16 x 16 f32 at ss[sc]), between barriers.
fn scale_scratch(sc: u32, sg: u32, lane: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) { ss[sc + e] = ss[sc + e] * row_f[sg * 16u + e / 16u]; }
  workgroupBarrier();
}

// Output block b of every row of the workgroup: the KSPLIT subgroups of a row tile have stored
// their block b at their scratch; each split's O scaled by its factor (row_f), summed, and written
// to out (factors with 1 / l) or, for a WINDOW pass that is not the last, to the state.
fn combine_block(b: u32, lid: u32, row0: u32, total_rows: u32, kvh: u32, last: bool) {
  workgroupBarrier();
  for (var e = lid; e < ROWS * 16u; e = e + SG * NSG) {
    let t = e / 256u;
    let w = e % 256u;
    var acc = 0.0;
    for (var s = 0u; s < KSPLIT; s = s + 1u) {
      let g = s * RT + t;
      acc = acc + ss[g * 16u * SLD + w] * row_f[g * 16u + w / 16u];
    }
    let r = row0 + t * 16u + w / 16u;
    if (r < total_rows) {
      if (last) {
        out[((r / G) * p.H + kvh * G + r % G) * D + b * 16u + w % 16u] = acc;
      } else {
#if WINDOW
        state[state_base(r / G, kvh * G + r % G) + b * 16u + w % 16u] = acc;
#endif
      }
    }
  }
  workgroupBarrier();
}

#if WINDOW
// Block b of the carried O into this subgroup's scratch: the state for the first split, zeros for the others.
fn state_to_scratch(b: u32, sc: u32, split: u32, lane: u32, rt: u32, row0: u32, total_rows: u32, kvh: u32) {
  for (var e = lane; e < 256u; e = e + SG) {
    let r = min(row0 + rt * 16u + e / 16u, total_rows - 1u);
    var x = 0.0;
    if (split == 0u) { x = state[state_base(r / G, kvh * G + r % G) + b * 16u + e % 16u]; }
    ss[sc + e] = x;
  }
  workgroupBarrier();
}
#endif

@compute @workgroup_size(SG * NSG)
fn main(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(subgroup_id) sg: u32,
  @builtin(subgroup_invocation_id) lane: u32,
) {
  let kvh = wid.y;
  let row0 = wid.x * ROWS;
  let total_rows = p.M * G;
  let threads = SG * NSG;
  let rt = sg % RT;
  let split = sg / RT;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);   // keys [kbeg, kend) are visible to some row
  let ntiles = select(0u, (kend - kbeg + BK - 1u) / BK, kend > kbeg);
  let steps = (ntiles + KSPLIT - 1u) / KSPLIT;        // the same for every split: barriers line up

  if (lid == 0u) { flag = vec4<u32>(0u); }
  for (var i = lid; i < ROWS * D; i = i + threads) {
    let rc = min(row0 + i / D, total_rows - 1u);
    let x = q[((rc / G) * p.H + kvh * G + rc % G) * D + i % D] * p.scale;
    qs[(i / D) * LD + i % D] = f16(clamp(x, -65504.0, 65504.0));
  }

  // Lane `lane` serves row r of its subgroup's tile, keys 2 j + hk of each tile, read in an
  // order rotated by r / 8 so that the 32 lanes hit 32 banks of ss.
  let r = lane % 16u;
  let hk = lane / 16u;
  let rot = r / 8u;
  let rc = min(row0 + rt * 16u + r, total_rows - 1u);
  let qpos = p.pos0 + rc / G;
  let sc = sg * 16u * SLD;      // this subgroup's scores (16, SLD) and scratch (16, 16) in ss
  let pc = sg * 16u * PLD;      // this subgroup's probabilities in ps
  let srow = sc + r * SLD;
  let prow = pc + r * PLD;
  var mrun = NEG;
  var l = 0.0;                  // this lane's half of the row's sum
  var o0 = subgroup_matrix_result<f32, 16, 16>();
  var o1 = subgroup_matrix_result<f32, 16, 16>();
  var o2 = subgroup_matrix_result<f32, 16, 16>();
  var o3 = subgroup_matrix_result<f32, 16, 16>();
  var o4 = subgroup_matrix_result<f32, 16, 16>();
  var o5 = subgroup_matrix_result<f32, 16, 16>();
  var o6 = subgroup_matrix_result<f32, 16, 16>();
  var o7 = subgroup_matrix_result<f32, 16, 16>();

#if WINDOW
  // The carried state goes to the first split; the other splits start empty.
  if ((p.flags & FIRST) == 0u) {
    if (split == 0u) {
      let sb = state_base(rc / G, kvh * G + rc % G);
      mrun = state[sb + D];
      if (hk == 0u) { l = state[sb + D + 1u]; }
    }
    if (D > 0u) { state_to_scratch(0u, sc, split, lane, rt, row0, total_rows, kvh); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 16u) { state_to_scratch(1u, sc, split, lane, rt, row0, total_rows, kvh); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 32u) { state_to_scratch(2u, sc, split, lane, rt, row0, total_rows, kvh); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 48u) { state_to_scratch(3u, sc, split, lane, rt, row0, total_rows, kvh); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 64u) { state_to_scratch(4u, sc, split, lane, rt, row0, total_rows, kvh); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 80u) { state_to_scratch(5u, sc, split, lane, rt, row0, total_rows, kvh); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 96u) { state_to_scratch(6u, sc, split, lane, rt, row0, total_rows, kvh); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 112u) { state_to_scratch(7u, sc, split, lane, rt, row0, total_rows, kvh); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
  }
#endif

  workgroupBarrier();   // qs and the flag are set
  for (var t = 0u; t < steps; t = t + 1u) {
    // The last step's tile may lie past kend for some splits: its loads clamp, its P is 0.
    let kt = kbeg + (t * KSPLIT + split) * BK;
    let kb0 = kv_rows(kt, kend, kvh);
    let kb1 = kv_rows(kt + 16u, kend, kvh);
#if !BK32
    let kb2 = kv_rows(kt + 32u, kend, kvh);
    let kb3 = kv_rows(kt + 48u, kend, kvh);
#endif

    // S = Q K^T: left Q rows (row-major in qs), right K^T (K's rows as columns: col-major in the pool).
    var s0 = subgroup_matrix_result<f32, 16, 16>();
    var s1 = subgroup_matrix_result<f32, 16, 16>();
#if !BK32
    var s2 = subgroup_matrix_result<f32, 16, 16>();
    var s3 = subgroup_matrix_result<f32, 16, 16>();
#endif
    for (var kd = 0u; kd < D; kd = kd + 16u) {
      let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&qs, rt * 16u * LD + kd, LD);
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb0 + kd, D);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb1 + kd, D);
#if !BK32
      let b2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb2 + kd, D);
      let b3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb3 + kd, D);
#endif
      s0 = subgroupMatrixMultiplyAccumulate(a, b0, s0);
      s1 = subgroupMatrixMultiplyAccumulate(a, b1, s1);
#if !BK32
      s2 = subgroupMatrixMultiplyAccumulate(a, b2, s2);
      s3 = subgroupMatrixMultiplyAccumulate(a, b3, s3);
#endif
    }
    subgroupMatrixStore<row_major>(&ss, sc, s0, SLD);
    subgroupMatrixStore<row_major>(&ss, sc + 16u, s1, SLD);
#if !BK32
    subgroupMatrixStore<row_major>(&ss, sc + 32u, s2, SLD);
    subgroupMatrixStore<row_major>(&ss, sc + 48u, s3, SLD);
#endif
    workgroupBarrier();
    // Every read of the previous step's flag is done: clear the next step's.
    if (lid == 0u) { flag[(t + 1u) % 2u] = 0u; }

    var tmax = NEG;
    for (var j = 0u; j < BK / 2u; j = j + 1u) {
      let k = 2u * ((j + rot) % (BK / 2u)) + hk;
      let pos = kt + k;
      if (pos <= qpos && pos < kend) { tmax = max(tmax, ss[srow + k]); }
    }
    tmax = max(tmax, subgroupShuffleXor(tmax, 16u));
    // Both lanes of a row hold the same tmax and mrun, so they take the same branch.
    var alpha = 1.0;
    if (tmax > mrun + TAU) {
      alpha = exp(mrun - tmax);   // 0 from the empty state
      if (l > 0.0) { flag[t % 2u] = 1u; }
      mrun = tmax;
      l = l * alpha;
    }
    if (hk == 0u) { row_f[sg * 16u + r] = alpha; }
    for (var j = 0u; j < BK / 2u; j = j + 1u) {
      let k = 2u * ((j + rot) % (BK / 2u)) + hk;
      let pos = kt + k;
      var ph = f16(0.0);
      if (pos <= qpos && pos < kend) { ph = f16(exp(ss[srow + k] - mrun)); }
      ps[prow + k] = ph;
      l = l + f32(ph);
    }
    // A barrier: the probabilities and factors are visible below, and the branch is uniform.
    if (workgroupUniformLoad(&flag)[t % 2u] != 0u) {
      if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scale_scratch(sc, sg, lane); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scale_scratch(sc, sg, lane); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scale_scratch(sc, sg, lane); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scale_scratch(sc, sg, lane); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scale_scratch(sc, sg, lane); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scale_scratch(sc, sg, lane); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scale_scratch(sc, sg, lane); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scale_scratch(sc, sg, lane); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    }

    // O += P V: left P (row-major in ps), right V (row-major in the pool).
    let p0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc, PLD);
    let p1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc + 16u, PLD);
#if !BK32
    let p2 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc + 32u, PLD);
    let p3 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc + 48u, PLD);
#endif
    if (D > 0u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(0u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(0u), D);
#if BK32
      o0 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o0));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(0u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(0u), D);
      o0 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o0))));
#endif
    }
    if (D > 16u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(1u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(1u), D);
#if BK32
      o1 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o1));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(1u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(1u), D);
      o1 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o1))));
#endif
    }
    if (D > 32u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(2u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(2u), D);
#if BK32
      o2 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o2));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(2u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(2u), D);
      o2 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o2))));
#endif
    }
    if (D > 48u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(3u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(3u), D);
#if BK32
      o3 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o3));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(3u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(3u), D);
      o3 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o3))));
#endif
    }
    if (D > 64u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(4u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(4u), D);
#if BK32
      o4 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o4));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(4u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(4u), D);
      o4 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o4))));
#endif
    }
    if (D > 80u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(5u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(5u), D);
#if BK32
      o5 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o5));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(5u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(5u), D);
      o5 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o5))));
#endif
    }
    if (D > 96u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(6u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(6u), D);
#if BK32
      o6 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o6));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(6u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(6u), D);
      o6 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o6))));
#endif
    }
    if (D > 112u) {
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(7u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(7u), D);
#if BK32
      o7 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o7));
#else
      let v2 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb2 + v_col(7u), D);
      let v3 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb3 + v_col(7u), D);
      o7 = subgroupMatrixMultiplyAccumulate(p3, v3, subgroupMatrixMultiplyAccumulate(p2, v2, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o7))));
#endif
    }
  }

  // Merge the splits of each row: m = the largest of their maxima, l = sum of l_s e^(m_s - m),
  // O = sum of O_s e^(m_s - m), divided by l where the output is written.
  l = l + subgroupShuffleXor(l, 16u);
  workgroupBarrier();
  if (hk == 0u) {
    row_f[sg * 16u + r] = mrun;
    row_l[sg * 16u + r] = l;
  }
  workgroupBarrier();
  var mall = NEG;
  for (var s = 0u; s < KSPLIT; s = s + 1u) { mall = max(mall, row_f[(s * RT + rt) * 16u + r]); }
  var lall = 0.0;
  for (var s = 0u; s < KSPLIT; s = s + 1u) {
    let g = (s * RT + rt) * 16u + r;
    lall = lall + row_l[g] * exp(row_f[g] - mall);
  }
  var last = true;
#if WINDOW
  last = (p.flags & LAST) != 0u;
  if (!last && split == 0u && hk == 0u && row0 + rt * 16u + r < total_rows) {
    let sb = state_base(rc / G, kvh * G + rc % G);
    state[sb + D] = mall;
    state[sb + D + 1u] = lall;
  }
#endif
  var f = exp(mrun - mall);
  if (last) { f = f * select(0.0, 1.0 / lall, lall > 0.0); }
  workgroupBarrier();
  if (hk == 0u) { row_f[sg * 16u + r] = f; }
  if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); combine_block(0u, lid, row0, total_rows, kvh, last); }
  if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); combine_block(1u, lid, row0, total_rows, kvh, last); }
  if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); combine_block(2u, lid, row0, total_rows, kvh, last); }
  if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); combine_block(3u, lid, row0, total_rows, kvh, last); }
  if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); combine_block(4u, lid, row0, total_rows, kvh, last); }
  if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); combine_block(5u, lid, row0, total_rows, kvh, last); }
  if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); combine_block(6u, lid, row0, total_rows, kvh, last); }
  if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); combine_block(7u, lid, row0, total_rows, kvh, last); }
}
