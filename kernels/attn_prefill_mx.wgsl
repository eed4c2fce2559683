// Causal prefill attention on the GPU's matrix units (Dawn's subgroup matrices, f16 x f16 ->
// f32 16x16x16): the contract, bindings and WINDOW mode of attn_prefill.wgsl
// (lib/attn_prefill_io.wgsl), but a workgroup owns ROWS = 16 * NSG rows (query,
// head-in-group) of one kv head, 16 per subgroup, so every K/V tile staged in workgroup
// memory serves all G query heads. Per tile of BK = 32 keys a subgroup computes its 16 x 32
// scores S = Q K^T on the matrix units (Q staged once as f16, pre-scaled), the row owners
// (lanes 0..15) run the online softmax on S and write P as f16, and O += P V runs on the
// matrix units into D/16 accumulators held in registers for the whole pass: no score
// matrix beyond one tile exists in memory.
// The accumulators cannot be scaled row by row in registers, so the softmax is lazy: P is
// taken against a row's reference max m, which moves (and O is rescaled through workgroup
// memory) only when a tile's max exceeds m by more than TAU; P <= e^TAU stays well inside
// f16. m, l and O always describe the same sums, which is all the WINDOW state needs.
// The D/16 accumulators are eight named variables, each used under `if (D > 16 i)` (D is an
// override, so the branches are uniform), not an array: on an H100 (driver 580.159) the array
// version, indexed by a loop counter, returned NaN where the emulation matched the CPU.
// OSHARED keeps O in workgroup memory instead (16 x D f32 per subgroup, each block loaded,
// multiplied into and stored back every tile; rescaled in place): slower, but with no
// accumulator living across the key loop, the form llama.cpp's WebGPU flash attention uses; the
// device takes it only where the register form fails its check (engine/attn-check.ts).
// Offsets of matrix loads and stores derive only from subgroup_id and loop counters (Dawn
// requires them uniform within a subgroup); the workgroup is NSG subgroups of exactly SG
// lanes, SG the device's fixed subgroup size. Strides and offsets are multiples of 16 bytes,
// and so is every workgroup variable's size: on an H100 (driver 580.159) this kernel with a
// 4-byte `rescale: u32` beside its matrix arrays gave garbage from every matrix load and store
// (NaN, values of 1e3, V shifted by a column) while the same loads and stores in a shader with
// only 16-byte-multiple variables were exact (bench/flash-diag.ts; test/kernels-flash.test.ts
// checks the sizes).
enable f16;
enable chromium_experimental_subgroup_matrix;
#if KDIRECT
// The pool offsets of K and V come from the block table: uniform (workgroup-uniform positions),
// which the analysis cannot see through a storage load.
diagnostic(off, chromium.subgroup_matrix_uniformity);
#endif

#include lib/attn_prefill_io.wgsl

override G: u32 = 1;      // query heads per kv head
override D: u32 = 128;    // head dim: multiple of 16, at most 128
override SG: u32 = 32u;   // lanes per subgroup
override NSG: u32 = 4u;   // subgroups per workgroup
override PAD: u32 = 8u;   // halves after each staged row (0 or 8: rows stay 16-byte aligned)
const BK: u32 = 32u;      // keys per tile
const NEG: f32 = -3.0e38;
const TAU: f32 = 8.0;     // how far a tile's max may pass the reference max before O is rescaled

override ROWS: u32 = 16u * NSG;
override LD: u32 = D + PAD;          // row stride of qs and ks (halves)
override PLD: u32 = BK + PAD;        // row stride of ps (halves)
override QS_SIZE: u32 = ROWS * LD;
override KS_SIZE: u32 = BK * LD;
override SS_SIZE: u32 = ROWS * BK;
override PS_SIZE: u32 = ROWS * PLD;

var<workgroup> qs: array<f16, QS_SIZE>;   // (ROWS, LD): the rows' queries * scale
#if !KDIRECT
var<workgroup> ks: array<f16, KS_SIZE>;   // (BK, LD): the tile's keys
var<workgroup> vs: array<f16, KS_SIZE>;   // (BK, LD): the tile's values
#endif
var<workgroup> ss: array<f32, SS_SIZE>;   // per subgroup (16, BK): scores; also a 16 x 16 scratch
var<workgroup> ps: array<f16, PS_SIZE>;   // per subgroup (16, PLD): probabilities
var<workgroup> row_a: array<f32, ROWS>;   // per row: the rescale factor of this tile, then 1 / l
var<workgroup> rescale: vec4<u32>;        // x: some row of the workgroup moved its reference max (16 bytes: see above)
#if OSHARED
override OS_SIZE: u32 = ROWS * D;
var<workgroup> os: array<f32, OS_SIZE>;   // (ROWS, D): the unnormalized output sums
#endif

// The first column of output block b (< D / 16) in vs. A function, not `16u * b`: the blocks
// past D are dead branches, but Dawn checks constant matrix offsets against the array's size
// (D < 128 failed pipeline creation on an H100 with a constant offset there).
fn v_col(b: u32) -> u32 { return min(b, D / 16u - 1u) * 16u; }

#if KDIRECT
// KDIRECT: K and V are not staged; a tile's two halves of 16 keys are loaded as matrices
// straight from the pool (a half lies in one block: BS is a multiple of 16). This returns the
// first f16 of the K (and V) row of the 16 keys from `pos` (a multiple of 16), or for keys wholly
// past kend those of the last visible 16: pool data either way (finite), masked to P = 0.
fn kv_rows(pos: u32, kend: u32, kvh: u32) -> u32 {
  let at = min(pos, ((kend - 1u) / 16u) * 16u);
  return ((table[at / p.BS] * p.KV + kvh) * p.BS + at % p.BS) * D;
}
#endif

// The scalar sides of the accumulators' trips through this subgroup's scratch (16 x 16 f32 at
// ss[sc]), each between barriers: block b holds output columns 16 b .. 16 b + 15.
fn scale_scratch(sc: u32, sg: u32, lane: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) { ss[sc + e] = ss[sc + e] * row_a[sg * 16u + e / 16u]; }
  workgroupBarrier();
}

fn scratch_to_out(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) {
    let r = row0 + sg * 16u + e / 16u;
    if (r < total_rows) { out[((r / G) * p.H + kvh * G + r % G) * D + b * 16u + e % 16u] = ss[sc + e] * row_a[sg * 16u + e / 16u]; }
  }
  workgroupBarrier();
}

#if WINDOW
fn state_to_scratch(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  for (var e = lane; e < 256u; e = e + SG) {
    let r = min(row0 + sg * 16u + e / 16u, total_rows - 1u);
    ss[sc + e] = state[state_base(r / G, kvh * G + r % G) + b * 16u + e % 16u];
  }
  workgroupBarrier();
}

fn scratch_to_state(b: u32, sc: u32, sg: u32, lane: u32, row0: u32, total_rows: u32, kvh: u32) {
  workgroupBarrier();
  for (var e = lane; e < 256u; e = e + SG) {
    let r = row0 + sg * 16u + e / 16u;
    if (r < total_rows) { state[state_base(r / G, kvh * G + r % G) + b * 16u + e % 16u] = ss[sc + e]; }
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
  let half_d = D / 2u;
  let last_row = min(row0 + ROWS, total_rows) - 1u;
  let kbeg = keys_begin();
  let kend = keys_end(p.pos0 + last_row / G + 1u);   // keys [kbeg, kend) are visible to some row

  for (var i = lid; i < ROWS * D; i = i + threads) {
    let rc = min(row0 + i / D, total_rows - 1u);
    let x = q[((rc / G) * p.H + kvh * G + rc % G) * D + i % D] * p.scale;
    qs[(i / D) * LD + i % D] = f16(clamp(x, -65504.0, 65504.0));
  }

  // Lanes 0..15 of a subgroup own its rows (row `lane` of its matrices) for the softmax.
  let owner = lane < 16u;
  let rr = sg * 16u + min(lane, 15u);
  let rc = min(row0 + rr, total_rows - 1u);
  let qi = rc / G;
  let h = kvh * G + rc % G;
  let qpos = p.pos0 + qi;
  let sc = sg * 16u * BK;       // this subgroup's scores (16, BK) and scratch (16, 16) in ss
  let pc = sg * 16u * PLD;      // this subgroup's probabilities in ps
  var mrun = NEG;
  var l = 0.0;
#if OSHARED
  let oc = sg * 16u * D;         // this subgroup's rows of os
  for (var e = lane; e < 16u * D; e = e + SG) { os[oc + e] = 0.0; }
#else
  var o0 = subgroup_matrix_result<f32, 16, 16>();
  var o1 = subgroup_matrix_result<f32, 16, 16>();
  var o2 = subgroup_matrix_result<f32, 16, 16>();
  var o3 = subgroup_matrix_result<f32, 16, 16>();
  var o4 = subgroup_matrix_result<f32, 16, 16>();
  var o5 = subgroup_matrix_result<f32, 16, 16>();
  var o6 = subgroup_matrix_result<f32, 16, 16>();
  var o7 = subgroup_matrix_result<f32, 16, 16>();
#endif

#if WINDOW
  if ((p.flags & FIRST) == 0u) {
    if (owner) {
      let sb = state_base(qi, h);
      mrun = state[sb + D];
      l = state[sb + D + 1u];
    }
#if OSHARED
    for (var e = lane; e < 16u * D; e = e + SG) {
      let r = min(row0 + sg * 16u + e / D, total_rows - 1u);
      os[oc + e] = state[state_base(r / G, kvh * G + r % G) + e % D];
    }
#else
    if (D > 0u) { state_to_scratch(0u, sc, sg, lane, row0, total_rows, kvh); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 16u) { state_to_scratch(1u, sc, sg, lane, row0, total_rows, kvh); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 32u) { state_to_scratch(2u, sc, sg, lane, row0, total_rows, kvh); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 48u) { state_to_scratch(3u, sc, sg, lane, row0, total_rows, kvh); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 64u) { state_to_scratch(4u, sc, sg, lane, row0, total_rows, kvh); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 80u) { state_to_scratch(5u, sc, sg, lane, row0, total_rows, kvh); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 96u) { state_to_scratch(6u, sc, sg, lane, row0, total_rows, kvh); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
    if (D > 112u) { state_to_scratch(7u, sc, sg, lane, row0, total_rows, kvh); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
#endif
  }
#endif

#if KDIRECT
  workgroupBarrier();   // qs is staged (the staged form's loop has this barrier at its top)
#endif
  for (var kt = kbeg; kt < kend; kt = kt + BK) {
#if KDIRECT
    // No barrier: this subgroup's scores and probabilities were last read before the previous
    // tile's workgroupUniformLoad, and nothing else is shared.
    if (lid == 0u) { rescale.x = 0u; }
    let kb0 = kv_rows(kt, kend, kvh);
    let kb1 = kv_rows(kt + 16u, kend, kvh);
#else
    workgroupBarrier();
    if (lid == 0u) { rescale.x = 0u; }
    for (var i = lid; i < BK * half_d; i = i + threads) {
      let key = i / half_d;
      let w = i % half_d;
      var kw = 0u;
      var vw = 0u;
      if (kt + key < kend) {
        let idx = kv_word(kt + key, kvh) + w;
        kw = kpool[idx];
        vw = vpool[idx];
      }
      let kh = bitcast<vec2<f16>>(kw);
      let vh = bitcast<vec2<f16>>(vw);
      ks[key * LD + 2u * w] = kh.x;
      ks[key * LD + 2u * w + 1u] = kh.y;
      vs[key * LD + 2u * w] = vh.x;
      vs[key * LD + 2u * w + 1u] = vh.y;
    }
    workgroupBarrier();
#endif

    // S = Q K^T: left Q rows (row-major in qs), right K^T (K's rows as columns: col-major in ks).
    var s0 = subgroup_matrix_result<f32, 16, 16>();
    var s1 = subgroup_matrix_result<f32, 16, 16>();
    for (var kd = 0u; kd < D; kd = kd + 16u) {
      let a = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&qs, sg * 16u * LD + kd, LD);
#if KDIRECT
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb0 + kd, D);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&kpool, kb1 + kd, D);
#else
      let b0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ks, kd, LD);
      let b1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(&ks, 16u * LD + kd, LD);
#endif
      s0 = subgroupMatrixMultiplyAccumulate(a, b0, s0);
      s1 = subgroupMatrixMultiplyAccumulate(a, b1, s1);
    }
    subgroupMatrixStore<row_major>(&ss, sc, s0, BK);
    subgroupMatrixStore<row_major>(&ss, sc + 16u, s1, BK);
    workgroupBarrier();

    if (owner) {
      let srow = sc + lane * BK;
      var tmax = NEG;
      for (var k = 0u; k < BK; k = k + 1u) {
        let pos = kt + k;
        if (pos <= qpos && pos < kend) { tmax = max(tmax, ss[srow + k]); }
      }
      var alpha = 1.0;
      if (tmax > mrun + TAU) {
        alpha = exp(mrun - tmax);   // 0 from the empty state
        if (l > 0.0) { rescale.x = 1u; }
        mrun = tmax;
        l = l * alpha;
      }
      row_a[rr] = alpha;
      for (var k = 0u; k < BK; k = k + 1u) {
        let pos = kt + k;
        var ph = f16(0.0);
        if (pos <= qpos && pos < kend) { ph = f16(exp(ss[srow + k] - mrun)); }
        ps[pc + lane * PLD + k] = ph;
        l = l + f32(ph);
      }
    }
    // A barrier: the probabilities are visible below, and the branch is uniform.
    if (workgroupUniformLoad(&rescale).x != 0u) {
#if OSHARED
      for (var e = lane; e < 16u * D; e = e + SG) { os[oc + e] = os[oc + e] * row_a[sg * 16u + e / D]; }
      workgroupBarrier();
#else
      if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scale_scratch(sc, sg, lane); o0 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scale_scratch(sc, sg, lane); o1 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scale_scratch(sc, sg, lane); o2 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scale_scratch(sc, sg, lane); o3 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scale_scratch(sc, sg, lane); o4 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scale_scratch(sc, sg, lane); o5 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scale_scratch(sc, sg, lane); o6 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
      if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scale_scratch(sc, sg, lane); o7 = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&ss, sc, 16u); workgroupBarrier(); }
#endif
    }

    // O += P V: left P (row-major in ps), right V (row-major in vs).
    let p0 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc, PLD);
    let p1 = subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(&ps, pc + 16u, PLD);
#if OSHARED
    for (var b = 0u; b < D; b = b + 16u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + b, D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + b, D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, b, LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + b, LD);
#endif
      let acc = subgroupMatrixLoad<subgroup_matrix_result<f32, 16, 16>, row_major>(&os, oc + b, D);
      subgroupMatrixStore<row_major>(&os, oc + b, subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, acc)), D);
    }
#else
    if (D > 0u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(0u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(0u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(0u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(0u), LD);
#endif
      o0 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o0));
    }
    if (D > 16u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(1u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(1u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(1u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(1u), LD);
#endif
      o1 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o1));
    }
    if (D > 32u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(2u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(2u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(2u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(2u), LD);
#endif
      o2 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o2));
    }
    if (D > 48u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(3u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(3u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(3u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(3u), LD);
#endif
      o3 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o3));
    }
    if (D > 64u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(4u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(4u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(4u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(4u), LD);
#endif
      o4 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o4));
    }
    if (D > 80u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(5u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(5u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(5u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(5u), LD);
#endif
      o5 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o5));
    }
    if (D > 96u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(6u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(6u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(6u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(6u), LD);
#endif
      o6 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o6));
    }
    if (D > 112u) {
#if KDIRECT
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb0 + v_col(7u), D);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vpool, kb1 + v_col(7u), D);
#else
      let v0 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, v_col(7u), LD);
      let v1 = subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, row_major>(&vs, 16u * LD + v_col(7u), LD);
#endif
      o7 = subgroupMatrixMultiplyAccumulate(p1, v1, subgroupMatrixMultiplyAccumulate(p0, v0, o7));
    }
#endif
  }

  workgroupBarrier();
  if (owner) { row_a[rr] = 1.0 / l; }
#if WINDOW
  if ((p.flags & LAST) == 0u) {
    if (owner && row0 + rr < total_rows) {
      let sb = state_base(qi, h);
      state[sb + D] = mrun;
      state[sb + D + 1u] = l;
    }
#if OSHARED
    for (var e = lane; e < 16u * D; e = e + SG) {
      let r = row0 + sg * 16u + e / D;
      if (r < total_rows) { state[state_base(r / G, kvh * G + r % G) + e % D] = os[oc + e]; }
    }
#else
    if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scratch_to_state(0u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scratch_to_state(1u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scratch_to_state(2u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scratch_to_state(3u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scratch_to_state(4u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scratch_to_state(5u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scratch_to_state(6u, sc, sg, lane, row0, total_rows, kvh); }
    if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scratch_to_state(7u, sc, sg, lane, row0, total_rows, kvh); }
#endif
    return;
  }
#endif
#if OSHARED
  workgroupBarrier();
  for (var e = lane; e < 16u * D; e = e + SG) {
    let r = row0 + sg * 16u + e / D;
    if (r < total_rows) { out[((r / G) * p.H + kvh * G + r % G) * D + e % D] = os[oc + e] * row_a[sg * 16u + e / D]; }
  }
#else
  if (D > 0u) { subgroupMatrixStore<row_major>(&ss, sc, o0, 16u); scratch_to_out(0u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 16u) { subgroupMatrixStore<row_major>(&ss, sc, o1, 16u); scratch_to_out(1u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 32u) { subgroupMatrixStore<row_major>(&ss, sc, o2, 16u); scratch_to_out(2u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 48u) { subgroupMatrixStore<row_major>(&ss, sc, o3, 16u); scratch_to_out(3u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 64u) { subgroupMatrixStore<row_major>(&ss, sc, o4, 16u); scratch_to_out(4u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 80u) { subgroupMatrixStore<row_major>(&ss, sc, o5, 16u); scratch_to_out(5u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 96u) { subgroupMatrixStore<row_major>(&ss, sc, o6, 16u); scratch_to_out(6u, sc, sg, lane, row0, total_rows, kvh); }
  if (D > 112u) { subgroupMatrixStore<row_major>(&ss, sc, o7, 16u); scratch_to_out(7u, sc, sg, lane, row0, total_rows, kvh); }
#endif
}
