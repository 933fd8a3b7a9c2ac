// CPU forward and backward. Where the packed kernel runs (recurrent.h: a CPU
// with AVX-512F or AVX2+FMA, no projection), R is packed into panels once per
// call (or read from w.packed) and a team of threads runs the steps, each
// thread owning blocks of units for the whole call: per step, its blocks'
// h R^T by the kernel, their gate pass (cell_math.h) right after (from 64
// rows, once over its units after all of them), its part of h, then a wait
// for the others' part. Where W and R are small, x W^T takes
// the same kernel on W packed the same way, each thread a few steps ahead of
// its recurrence; else BLAS GEMMs project the inputs of all steps (of each
// chunk of steps in inference). Elsewhere each step is a BLAS GEMM and a fused
// pass over the units. Backward runs the gate pass and dz R per step on the
// team and the kernel, or the BLAS, as the forward does, then dx, dW, dR
// (and dW_hr) as whole-sequence products (dx by the kernel where the forward
// kept W packed, dW and dR too where it packed x and h_{t-1}: kWeightChunk);
// db is summed in the gate pass.
//
// Ragged batches and the reverse direction run on a packed schedule: rows
// are ordered by decreasing length, so the sequences still running at
// processing step k are the first batch[k] rows, and packed row (k, j) is
// sequence perm[j] at time k (or len[j]-1-k in reverse). Inputs are gathered
// into that order once, outputs scattered back; the GEMMs see only valid
// rows. Without lengths and in the forward direction the schedule is the
// identity and nothing is gathered.
#include "lstm_ext/lstm.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "blas.h"
#include "common.h"
#include "lstm_ext/cell_math.h"
#include "lstm_ext/runtime.h"  // fused_gate_math
#include "parallel.h"
#include "recurrent.h"

namespace lstm_ext {
namespace {

using namespace detail;  // NOLINT: sizes, Config checks, the schedule

// Element offsets of the buffers in the forward workspace, for a batch whose
// packed rows number at most T*B. One place for forward, backward and sizes.
// Elements of R packed for recurrent_block: float's (H rounded up to 32
// units) is at least double's (to 16), so one size serves both.
int64_t packed_size(const Config& c) { return packed_recurrent_size<float>(c.H, c.O()); }

// Where W and R are small enough (4H(I+O) <= kTeamWeights elements, 8 MiB in
// float32), the input products x W^T are computed by the recurrent kernel on
// W packed as R is, each thread for its own units, a few steps at a time (at
// least kTeamInputRows rows) just before their recurrence, instead of by the
// BLAS over a chunk. Their z rows are then still in the core's cache when the
// recurrence adds h R^T to them: read back from L3 they cost a
// (100,64,512,512) step's panel 13 %. Past that size the packed W and R read
// every step no longer fit in L3 beside the rest (18 MiB took a B = 64
// forward 15 % longer here). Inference and training alike, for the same
// bits; the rule depends on the shape alone (dev/perf-notes.md, 27 and 32).
// Backward, under the same rule: dx = dz W by the kernel too, on W packed by
// columns, each thread for its panels of I's columns, at least kTeamDxRows
// rows at a time while the other threads arrive at the step's barrier,
// instead of by the BLAS after the loop (dev/perf-notes.md, 34).
// Past that size the kernel fetches each next panel ahead (fetch_ahead,
// recurrent.h): R then comes from L3 or memory, and the (50,128,1024,1024)
// forward took 5 % longer without (dev/perf-notes.md, 38).
constexpr int64_t kTeamInputRows = 64, kTeamDxRows = 16, kTeamWeights = int64_t(1) << 21;
// In the forward's team, batches of fewer than kRotateRows rows (the
// kernel's few-row path) sum each block's h R^T from the block's first unit
// on, round to it again, so that a thread starts on the columns of h it wrote
// itself and waits for the others only where theirs begin: (100,1,128,128)
// forward -3 % on two threads, -13 % on one. From 4 rows on the split
// products cost what the wait did (+2 % at B = 16): they sum in column order
// after the wait (dev/perf-notes.md, 42).
constexpr int64_t kRotateRows = 4;
// Backward where team_size(B, H, O) <= kChainTeam (at most 3 * 32768 - 1
// multiply-adds in a step's dz R, e.g. B = 1 at H = O = 128: the units'
// split would take at most two threads), under team_products: one thread runs the recurrence
// alone (each step's gate pass and all of dz R, with R in its core's L2), the
// other the products that follow it, chunk by chunk behind it: dx = dz W and
// dR += dz^T h of each chunk of kTeamDxRows rows, in order from the last;
// then both take dW's blocks of kChainWeightBlock rows. Split by units, the
// recurrence's halves saved what their wait at every step cost
// ((100,1,128,128): 192 us alone, 209 on two threads), while dW and dR took
// 95 us each after the loop. Forward+backward 0.88-0.92 of the time at
// (100,1,128,128), 0.76 at (100,4,64,64) (dev/perf-notes.md, 81). Chunks and
// blocks depend on the shape alone: the same bits on one thread (all in
// turn) or two.
constexpr int64_t kChainTeam = 2, kChainWeightBlock = 64;
// Backward past kChainTeam, under team_products, in float where the AVX-512F
// kernel runs (team_weight_grads): dW = dz^T x and dR = dz^T h by the kernel
// in the team too, after the loop, each thread for the rows of its own units'
// gates, in chunks of kWeightChunk rows of dz: its columns transposed into the
// scratch (transpose_columns), then column_product on x and h_{t-1} packed by
// columns, which the training forward's team wrote beside them (each thread
// its share of x's rows with the input products, and its columns of h after
// each step). The BLAS packed all of dz on each thread (dW on one, dR on the
// other) at 0.85 of the GEMM rate at (100,16,256,256), where the kernel runs
// at about 1.0 (dev/perf-notes.md, 86).
constexpr int64_t kWeightChunk = 256;
// In the forward's team, a step of at least kWholePassRows rows runs the
// gate pass once over all of a thread's units after all its blocks' products,
// rather than block by block after each (rows of 4 x 32 units, each two
// vectors long): inference 0.97-0.98 of the time at B = 64, H = 128 to 256
// on the Intel AVX-512 VM; at B = 16 1.01, at B = 32 0.98-1.01
// (dev/perf-notes.md, 77). The pass's cut depends on the shape alone, and
// elementwise passes give the same bits for any cut.
constexpr int64_t kWholePassRows = 64;
// A forward of one step, in inference, of at most kUnpackedRows rows reads W
// and R as they are, each tile transposed in registers, instead of packing
// them first: one group of the kernel's rows, so each tile is transposed once.
// On an Intel AVX-512 core, (1,B,512,512): B = 1 0.49 -> 0.17 ms, B = 12 0.36
// (onnxruntime 0.17 and 0.49). Past 12 rows each group transposes the tiles
// again: for two groups that still beats packing where W and R hold at least
// kUnpackedWeights elements (B = 16 and 24: 0.70 and 0.86 of packing's time
// at I = H = 512, 0.80 and 0.86 at 256), not below (1.00-1.07 at 64 and 128),
// and from about 32 rows packing once is faster (dev/perf-notes.md 75).
constexpr int64_t kUnpackedRows = 12, kUnpackedWeights = int64_t(1) << 18;
// Elements of W and R together: 4H(I+O).
int64_t weight_elements(const Config& c) { return mul(mul(4, c.H), add(c.I, c.O())); }
bool large_weights(const Config& c) { return weight_elements(c) > kTeamWeights; }
bool team_products(const Config& c) { return c.P == 0 && !large_weights(c); }
// A core's L2 in bytes, as the C library reports it (0 where it does not).
int64_t l2_bytes() {
#if defined(_SC_LEVEL2_CACHE_SIZE)
  static const int64_t bytes = std::max<long>(sysconf(_SC_LEVEL2_CACHE_SIZE), 0);
  return bytes;
#else
  return 0;
#endif
}
// The forward's x W^T by the kernel (team_products), but where a core's L2
// is under 1 MiB only up to half the bound: on the AMD Zen 3 VM (512 KiB)
// the team's products took a (100,64,512,512) forward (2 MiB of packed W and
// of R a thread) 16 % longer than the BLAS's, and cost nothing at H = 256
// (dev/perf-notes.md, 48 and 50). Backward and the workspace keep
// team_products' rule (the packed W's space stays, unused there); the choice
// depends on the shape and the CPU, never on the thread count.
bool team_inputs(const Config& c) {
  const int64_t l2 = l2_bytes();
  return team_products(c) &&
         (l2 == 0 || l2 >= (int64_t(1) << 20) || weight_elements(c) <= kTeamWeights / 2);
}
// Steps of B rows that make at least `rows` rows (rows for any B <= 0).
int64_t steps_for_rows(int64_t rows, int64_t B) {
  return B >= rows ? 1 : B <= 0 ? rows : (rows + B - 1) / B;
}

bool team_weight_grads(const Config& c);

struct ForwardLayout {
  int64_t xp, z, c, hp, m, h, cs, zt, rp, wp, wq, rb, wb, xb, hb, xh_flag, total;
};

ForwardLayout forward_layout(const Config& c, bool training) {
  const int64_t rows = mul(training ? c.T : std::min(c.T, inference_chunk(c.B)), c.B);
  ForwardLayout L{};
  Carve take;
  L.xp = take(training || gathers(c) ? mul(rows, c.I) : 0);   // [rows,I] x, kept or gathered
  L.z = take(mul(rows, 4 * c.H));                             // [rows,4H] gates
  L.c = take(training ? mul(add(rows, c.B), c.H) : 0);        // [B+rows,H] c0, then c_t
  L.hp = take(training ? mul(rows, c.O()) : 0);               // [rows,O] h_{t-1}
  L.m = take(c.P > 0 ? mul(training ? rows : c.B, c.H) : 0);  // [rows or B,H] m_t
  L.h = take(mul(2 * c.B, c.O()));                            // [2,B,O] h, alternating
  L.cs = take(training ? 0 : mul(2 * c.B, c.H));  // [2,B,H] c, alternating between steps
  L.zt = take(mul(4 * c.H, c.B));                 // [4H,B] the recurrent product, gate-major
  // R packed (recurrent.h), and for team_products W packed the same way; with
  // bf16_weights as bfloat16 where the CPU has AVX-512F (uint16_t elements in
  // the first half), as floats on rounded copies elsewhere.
  L.rp = take(c.P == 0 ? packed_size(c) : 0);
  L.wp = take(team_products(c) ? packed_recurrent_size<float>(c.H, c.I) : 0);
  // bf16_weights: [4H,I] W, [4H,O] R and [P,H] W_hr rounded.
  L.wq = take(c.bf16_weights ? add(mul(4 * c.H, add(c.I, c.O())), mul(c.P, c.H)) : 0);
  // training_keeps_weights: R [4H,O] and W [4H,I] packed by columns for backward.
  const bool keep = training && training_keeps_weights(c);
  L.rb = take(keep ? packed_size(c) : 0);
  L.wb = take(keep ? packed_recurrent_size<float>(c.I, c.H) : 0);
  // team_weight_grads: x [rows,I] and h_{t-1} [rows,O] packed by columns
  // (recurrent.h's pack_columns layout, K = rows) for backward's dW and dR,
  // and one element that says whether the forward wrote them (1) or not (0).
  const bool xh = training && team_weight_grads(c);
  L.xb = take(xh ? mul(rows, mul(recurrent_blocks<float>(c.I), kPanel<float>)) : 0);
  L.hb = take(xh ? mul(rows, mul(recurrent_blocks<float>(c.O()), kPanel<float>)) : 0);
  L.xh_flag = take(xh ? 1 : 0);
  L.total = take.used;
  return L;
}

// bf16_weights is for inference, in float.
void check_bf16(const Config& c, bool training, bool is_float = true) {
  if (c.bf16_weights && training)
    throw std::invalid_argument("lstm_ext: bf16_weights is for inference: training must be false");
  if (c.bf16_weights && !is_float)
    throw std::invalid_argument("lstm_ext: bf16_weights needs float (float32) data, got double");
}

// ---- weights packed once (lstm.h: pack_weights) ----------------------------

// The buffer: this header in its first 64 bytes (kPackedHeader elements of
// either type), then R's panels (packed_size), then W's where team_products
// (packed_recurrent_size<float>(H, I)), each as the forward's workspace holds
// them.
struct PackedHeader {
  int64_t magic, element, I, H, O, bf16, layout, unused;
};
static_assert(sizeof(PackedHeader) == 64);
constexpr int64_t kPackedMagic = 0x4b4341504d54534cLL;  // "LSTMPACK"
constexpr int64_t kPackedHeader = 16;                   // elements

// What lstm_forward packs for c on this CPU now: 0 (nothing: a projection,
// or the packed kernel off), else the panels' part width (packed_row) with
// bits for bfloat16 panels and for W (team_inputs).
template <typename S>
int64_t packed_layout(const Config& c) {
  if (c.P != 0 || !packed_recurrent_enabled()) return 0;
  const bool bf16_panels = c.bf16_weights && packed_bf16_enabled();
  return packed_row<S>() | int64_t(bf16_panels) << 16 | int64_t(team_inputs(c)) << 17;
}

std::string packed_shape(int64_t element, int64_t I, int64_t H, int64_t O, bool bf16) {
  const std::string type = element == 4 ? "float" : element == 8 ? "double" : "?";
  return type + " I=" + std::to_string(I) + " H=" + std::to_string(H) + " O=" + std::to_string(O) +
         (bf16 ? " bf16_weights" : "");
}

// w.packed's panels where they are what this call would pack, else nullptr
// (the call packs in its workspace). Throws where w.packed's header is not
// pack_weights' or names another shape.
template <typename S>
const S* packed_panels(const Weights<S>& w, const Config& c) {
  if (!w.packed) return nullptr;
  PackedHeader h;
  std::memcpy(&h, w.packed, sizeof h);
  if (h.magic != kPackedMagic)
    throw std::invalid_argument("lstm_ext: w.packed does not start with pack_weights' header");
  if (h.element != int64_t(sizeof(S)) || h.I != c.I || h.H != c.H || h.O != c.O() ||
      h.bf16 != int64_t(c.bf16_weights))
    throw std::invalid_argument("lstm_ext: w.packed holds weights packed for " +
                                packed_shape(h.element, h.I, h.H, h.O, h.bf16 != 0) +
                                ", this call has " +
                                packed_shape(int64_t(sizeof(S)), c.I, c.H, c.O(), c.bf16_weights));
  return h.layout != 0 && h.layout == packed_layout<S>(c) ? w.packed + kPackedHeader : nullptr;
}

// Block u of R's panels into Rp and, with_W, of W's into Wp, as the products
// read them: bfloat16 panels (bf16_panels, float), else panels of S.
template <typename S>
void pack_weight_block(S* Rp, S* Wp, const S* R, const S* W, int64_t H, int64_t I, int64_t O,
                       int64_t u, bool bf16_panels, bool with_W) {
  if constexpr (std::is_same_v<S, float>)
    if (bf16_panels) {
      pack_recurrent_block_bf16(reinterpret_cast<uint16_t*>(Rp), R, H, O, u);
      if (with_W) pack_recurrent_block_bf16(reinterpret_cast<uint16_t*>(Wp), W, H, I, u);
      return;
    }
  pack_recurrent_block(Rp, R, H, O, u);
  if (with_W) pack_recurrent_block(Wp, W, H, I, u);
}

struct BackwardLayout {
  int64_t dz, dh_all, dm, dh, dc, dxp, rb, dzt, total;
};

BackwardLayout backward_layout(const Config& c) {
  const int64_t rows = mul(c.T, c.B);
  BackwardLayout L{};
  Carve take;
  L.dz = take(mul(rows, 4 * c.H));                // [rows,4H]
  L.dh_all = take(c.P > 0 ? mul(rows, c.P) : 0);  // [rows,P] dL/dh_t
  L.dm = take(c.P > 0 ? mul(c.B, c.H) : 0);       // [B,H]
  L.dh = take(mul(c.B, c.O()));                   // [B,O] running dL/dh
  L.dc = take(mul(c.B, c.H));                     // [B,H] running dL/dc
  L.dxp = take(gathers(c) ? mul(rows, c.I) : 0);  // [rows,I]
  // R packed by columns (recurrent.h), unless the workspace keeps it.
  L.rb = take(c.P == 0 && !training_keeps_weights(c) ? packed_size(c) : 0);
  // team_weight_grads: a chunk of dz^T [4H,kWeightChunk + 16], each thread's
  // rows for its units (16 more columns: rows of 1,088 bytes, not 1,024, so
  // that the kernel's rows fall in different sets of L1).
  L.dzt = take(team_weight_grads(c) ? mul(kWeightChunk + 16, 4 * c.H) : 0);
  L.total = take.used;
  return L;
}

// n elements of src into dst; nothing where n is 0, where either may be null
// (memcpy's may not be, even for no bytes: H = 0 leaves hT and cT empty).
template <typename S>
void copy_elements(S* dst, const S* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(S) * size_t(n));
}

// dst[j] = src[perm[j]] for j < n (rows of `width`), or zeros if src is null.
template <typename S>
void gather_state(S* dst, const S* src, const Schedule& s, int64_t n, int64_t width) {
  for (int64_t j = 0; j < n; ++j) {
    if (src)
      copy_elements(dst + j * width, src + s.perm[j] * width, width);
    else
      std::fill(dst + j * width, dst + (j + 1) * width, S(0));
  }
}

// dst[perm[j]] = src[j].
template <typename S>
void scatter_state(S* dst, const S* src, const Schedule& s, int64_t n, int64_t width) {
  for (int64_t j = 0; j < n; ++j) copy_elements(dst + s.perm[j] * width, src + j * width, width);
}

// Packed rows [k0, k1) of a [T,B,width] array, into dst.
template <typename S>
void gather_steps(S* dst, const S* src, const Schedule& s, int64_t k0, int64_t k1, int64_t B,
                  int64_t width) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t j = 0; j < s.batch[k]; ++j)
      copy_elements(dst + (s.offset[k] - s.offset[k0] + j) * width, src + s.row(k, j, B) * width,
                    width);
}

// Step k's rows of src ([batch[k],width]) into their places of a [T,B,width]
// array; columns [c0, c1) only, if given.
template <typename S>
void scatter_step(S* dst, const S* src, const Schedule& s, int64_t k, int64_t B, int64_t width,
                  int64_t c0 = 0, int64_t c1 = -1) {
  const int64_t n = (c1 < 0 ? width : c1) - c0;
  for (int64_t j = 0; j < s.batch[k]; ++j)
    copy_elements(dst + s.row(k, j, B) * width + c0, src + j * width + c0, n);
}

// Columns [c0, c1) of rows [0, n) of src [n,width] into dst [n,width].
template <typename S>
void copy_columns(S* dst, const S* src, int64_t n, int64_t width, int64_t c0, int64_t c1) {
  for (int64_t j = 0; j < n; ++j)
    copy_elements(dst + j * width + c0, src + j * width + c0, c1 - c0);
}

// ---- the fused pointwise passes --------------------------------------------

// The fused passes are compiled for AVX-512 and AVX2+FMA besides the
// baseline, and the best the CPU has runs. Their first template argument is
// kFma (cell_math.h): true where the version that runs has FMA instructions
// (fused_gate_math, runtime.h), so that the exps' multiply-adds are one
// instruction each (the gate pass 1.3x faster alone, a B = 32, H = 128
// forward 5 %: dev/perf-notes.md, 77); elsewhere (x86 CPUs before 2013,
// virtual machines that hide FMA or, for GCC's x86-64-v3 clone, another of
// its features, and a build for the baseline alone) kFma = false, the same
// operations rounded twice: the C library's fma in each would take the pass
// tens of times longer. Without contraction into FMA (ISO C++ mode), every
// version of one kFma gives the same bits. GCC: target_clones, which the
// loader resolves (not under ThreadSanitizer: the loader runs the clones'
// resolvers before its runtime starts, and the instrumented resolvers
// crash). Clang refuses target_clones on templates: there the pass is
// inlined into a function of each target, and each call picks one (on_cpu;
// without them Clang's build took 1.15-1.27x GCC's time, dev/perf-notes.md
// 61-62). A call site names the pass and its template arguments but kFma, as
// LSTM_EXT_ON_CPU(pass, arguments...)(call arguments).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define LSTM_EXT_GCC_CLONES 1
// x86-64-v3: AVX2 and FMA (GCC 12 on). Before GCC 12 the AVX2 clone has no
// FMA instructions (and a clone for FMA alone would lose AVX2's integer
// vectors): there only the AVX-512F one fuses.
#if __GNUC__ >= 12
#define LSTM_EXT_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define LSTM_EXT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#elif defined(__clang__) && defined(__x86_64__)
#define LSTM_EXT_CLONES __attribute__((always_inline)) inline
#define LSTM_EXT_ON_CPU(pass, ...) on_cpu<pass<true, __VA_ARGS__>, pass<false, __VA_ARGS__>>
#else
#define LSTM_EXT_CLONES
#endif
#if !defined(LSTM_EXT_ON_CPU)  // GCC's clones, or one build for one target
#define LSTM_EXT_ON_CPU(pass, ...) \
  (fused_gate_math() ? pass<true, __VA_ARGS__> : pass<false, __VA_ARGS__>)
#endif
// A loop's iterations are independent (GCC's ivdep, Clang's assume_safety).
#if defined(__clang__)
#define LSTM_EXT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define LSTM_EXT_IVDEP _Pragma("GCC ivdep")
#else
#define LSTM_EXT_IVDEP
#endif
// The fused passes' buffers never overlap (forward alternates two c buffers
// in inference; step copies c first): telling the compiler lets it vectorise.
#define LSTM_EXT_RESTRICT __restrict

#if defined(__clang__) && defined(__x86_64__)
// Pass F (always inline, kFma) compiled for AVX-512F and for AVX2+FMA;
// on_cpu runs the best the CPU has, else Plain (kFma = false) for the
// baseline, inlined into it.
template <auto F, typename... A>
__attribute__((target("avx512f"))) void on_avx512f(A... a) {
  F(a...);
}
template <auto F, typename... A>
__attribute__((target("avx2,fma"))) void on_avx2(A... a) {
  F(a...);
}
inline int pass_isa() {  // 2 AVX-512F, 1 AVX2 and FMA, 0 neither
  static const int isa = [] {
    __builtin_cpu_init();  // where called before the runtime's constructor ran
    return __builtin_cpu_supports("avx512f")                                 ? 2
           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                             : 0;
  }();
  return isa;
}
template <auto F, auto Plain, typename... A>
void on_cpu(A... a) {
  switch (pass_isa()) {
    case 2:
      return on_avx512f<F>(a...);
    case 1:
      return on_avx2<F>(a...);
    default:
      return Plain(a...);
  }
}
#endif

// Forward for one row's units [j0, j1), bias added when kBias: inlined into
// each clone below, so that the loop has no branch on b (GCC turned that into
// masked loads: 20% of a B = 1 forward on Zen 3).
template <bool kFma, bool kBias, bool kSave, bool kPeep, bool kClip, bool kCoupled, typename S>
__attribute__((always_inline)) inline void cell_forward_row(
    S* LSTM_EXT_RESTRICT zn, S* LSTM_EXT_RESTRICT c, S* LSTM_EXT_RESTRICT m,
    const S* LSTM_EXT_RESTRICT c_prev, const S* LSTM_EXT_RESTRICT b,
    const S* LSTM_EXT_RESTRICT peep, S clip, int64_t H, int64_t j0, int64_t j1) {
  // Unit j reads and (with kSave) writes zn at j, H+j, 2H+j, 3H+j only: no
  // dependence between units, which the compiler cannot see alone.
  LSTM_EXT_IVDEP
  for (int64_t j = j0; j < j1; ++j) {
    cell::Gates<S> zz = cell::load_gates(zn, j, H);
    if (kBias) zz = {zz.i + b[j], zz.f + b[H + j], zz.g + b[2 * H + j], zz.o + b[3 * H + j]};
    const auto a = cell::cell_forward<kPeep, kClip, kCoupled, kFma>(
        &zz, c_prev[j], cell::peep_of<kPeep>(peep, j, H), clip, &c[j], &m[j]);
    if (kSave) cell::store_gates(zn, j, H, kClip ? zz : a);
  }
}

// Forward for nb rows. z [nb,4H]: x W^T + h R^T on entry; with kSave the
// activated gates (or, with kClip, the final pre-activations) on exit.
// c [nb,H] out; m [nb,H] out; b [4H] or null. No buffer may overlap another.
template <bool kFma, bool kSave, bool kPeep, bool kClip, bool kCoupled, typename S>
LSTM_EXT_CLONES void cell_forward_rows(S* LSTM_EXT_RESTRICT z, S* LSTM_EXT_RESTRICT c,
                                       S* LSTM_EXT_RESTRICT m, const S* LSTM_EXT_RESTRICT c_prev,
                                       const S* LSTM_EXT_RESTRICT b,
                                       const S* LSTM_EXT_RESTRICT peep, S clip, int64_t nb,
                                       int64_t H, int64_t j0, int64_t j1) {
  for (int64_t n = 0; n < nb; ++n) {
    S* zn = z + n * 4 * H;  // [4H]
    const int64_t k = n * H;
    if (b)
      cell_forward_row<kFma, true, kSave, kPeep, kClip, kCoupled>(zn, c + k, m + k, c_prev + k, b,
                                                                  peep, clip, H, j0, j1);
    else
      cell_forward_row<kFma, false, kSave, kPeep, kClip, kCoupled>(zn, c + k, m + k, c_prev + k, b,
                                                                   peep, clip, H, j0, j1);
  }
}

// Backward for nb rows.
//   dz [nb,4H] out;  dc [nb,H] in/out (dL/dc_t -> dL/dc_{t-1})
//   saved [nb,4H] what forward kept;  c_prev, c [nb,H];  dm [nb,H]
//   dy [nb,ldy] or null: added to dm as it is read (dm + dy, the bits of
//   adding it to dm first)
//   db [4H] accumulated (+=);  dpeep [3H] accumulated (+=) when kPeep
template <bool kFma, bool kPeep, bool kClip, bool kCoupled, typename S>
LSTM_EXT_CLONES void cell_backward_rows(S* LSTM_EXT_RESTRICT dz, S* LSTM_EXT_RESTRICT dc,
                                        S* LSTM_EXT_RESTRICT db, S* LSTM_EXT_RESTRICT dpeep,
                                        const S* LSTM_EXT_RESTRICT saved,
                                        const S* LSTM_EXT_RESTRICT c_prev,
                                        const S* LSTM_EXT_RESTRICT c, const S* LSTM_EXT_RESTRICT dm,
                                        const S* LSTM_EXT_RESTRICT peep, S clip, int64_t nb,
                                        int64_t H, int64_t j0, int64_t j1,
                                        const S* LSTM_EXT_RESTRICT dy, int64_t ldy) {
  for (int64_t n = 0; n < nb; ++n) {
    const S* sn = saved + n * 4 * H;
    const S* dyn = dy ? dy + n * ldy : nullptr;
    S* dzn = dz + n * 4 * H;
    // Unit j reads and writes saved, dzn and dpeep at j, H+j, 2H+j (and
    // 3H+j) only: no dependence between units (as in cell_forward_row).
    LSTM_EXT_IVDEP
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = n * H + j;
      const cell::Gates<S> kept = cell::load_gates(sn, j, H);
      const cell::Gates<S> a = kClip ? cell::activate<kClip, kCoupled, kFma>(kept, clip) : kept;
      const auto d = cell::cell_backward<kPeep, kClip, kCoupled, kFma>(
          a, kept, c_prev[k], c[k], dyn ? dm[k] + dyn[j] : dm[k], cell::peep_of<kPeep>(peep, j, H),
          clip, &dc[k]);
      cell::store_gates(dzn, j, H, d);
      if (kPeep) {  // ONNX order i, o, f
        dpeep[j] += d.i * c_prev[k];
        dpeep[H + j] += d.o * c[k];
        dpeep[2 * H + j] += d.f * c_prev[k];
      }
    }
  }
  // db += each row's dz in row order: the additions, so the bits, of adding
  // d to db in the pass above, where db's load right after dz's four stores
  // (rows of 4H) mostly matched a store's address in its low 12 bits and
  // waited for it (4K aliasing; dev/perf-notes.md, 81).
  for (int64_t n = 0; n < nb; ++n) {
    const S* dzn = dz + n * 4 * H;
    for (int64_t g = 0; g < 4; ++g) {
      LSTM_EXT_IVDEP
      for (int64_t j = j0; j < j1; ++j) db[g * H + j] += dzn[g * H + j];
    }
  }
}

// z[nb,4H] += h[nb,O] R^T. For batches of kGateMajorFrom to kGateMajorTo
// rows the BLAS is much faster on the transposed product R h^T (1.7x at
// B = 16, H = 256: dev/perf-notes.md), so that is computed into zt [4H,nb]
// and added back transposed. The choice depends on nb alone.
constexpr int64_t kGateMajorFrom = 8, kGateMajorTo = 64;

template <typename S>
void recurrent_product(S* z, S* zt, const S* h, const S* R, int64_t nb, int64_t G, int64_t O) {
  if (nb < kGateMajorFrom || nb > kGateMajorTo)
    return gemm(Op::N, Op::T, nb, G, O, S(1), h, O, R, O, S(1), z, G);
  gemm(Op::N, Op::T, G, nb, O, S(1), R, O, h, O, S(0), zt, nb);  // [4H,nb]
  constexpr int64_t kTile = 32;  // transpose in tiles that stay in L1
  for (int64_t q0 = 0; q0 < G; q0 += kTile)
    for (int64_t n = 0; n < nb; ++n)
      for (int64_t q = q0; q < std::min(G, q0 + kTile); ++q) z[n * G + q] += zt[q * nb + n];
}

// fn(j0, j1) over blocks of hidden units, in parallel when there is enough
// work. Elementwise passes give the same bits for any cut; a unit's peephole
// gradient is summed over the rows by the one task that owns the unit.
template <typename F>
void over_units(int64_t rows, int64_t H, F&& fn) {
  constexpr int64_t kUnits = 64, kMinWork = 4096;
  const int64_t blocks = (H + kUnits - 1) / kUnits;
  if (rows * H < kMinWork || blocks < 2) return fn(int64_t(0), H);
  parallel_for(blocks, [&](int64_t k) { fn(k * kUnits, std::min(H, (k + 1) * kUnits)); });
}

// fn(i, m) for the pieces [i, i + m) of [0, n), over the threads.
template <typename F>
void in_pieces(int64_t n, F&& fn) {
  constexpr int64_t kPiece = 32768;
  parallel_for((n + kPiece - 1) / kPiece,
               [&](int64_t p) { fn(p * kPiece, std::min(kPiece, n - p * kPiece)); });
}

// dst[i] = src[i] rounded to bfloat16, i < n, in pieces over the threads
// (serial, W's rounding took 5 % of a B = 1, H = 256 forward).
void round_weights(float* dst, const float* src, int64_t n) {
  in_pieces(n, [&](int64_t i, int64_t m) { round_to_bf16(dst + i, src + i, m); });
}

// Threads for a step of nb rows: one per 32K multiply-adds of the recurrent
// product (a step of B = 1, H = 128 splits in two), whole blocks each. Only
// speed depends on it: every block is computed the same way on any thread.
int team_size(int64_t nb, int64_t H, int64_t O) {
  // In double: nb*4*H*O can pass 2^63 for sizes the checks allow.
  return int(std::clamp(double(nb) * 4 * double(H) * double(O) / 32768, 1.0, 1024.0));
}

// The shapes where backward computes dW and dR in the team (float, where the
// AVX-512F kernel runs): the training workspace has room for x and h_{t-1}
// packed, backward's scratch for kWeightChunk rows of dz^T.
bool team_weight_grads(const Config& c) {
  return team_products(c) && team_size(c.B, c.H, c.O()) > kChainTeam;
}

}  // namespace

bool fused_gate_math() {
  static const bool fused = [] {
#if defined(LSTM_EXT_GCC_CLONES)
    __builtin_cpu_init();  // where called before the runtime's constructor ran
#if __GNUC__ >= 12
    return __builtin_cpu_supports("avx512f") || __builtin_cpu_supports("x86-64-v3");
#else
    return __builtin_cpu_supports("avx512f") != 0;
#endif
#elif defined(__clang__) && defined(__x86_64__)
    return pass_isa() > 0;
#elif defined(__FP_FAST_FMAF)  // one build for one target: its fmaf an instruction
    return true;
#else
    return false;
#endif
  }();
  return fused;
}

bool training_keeps_weights(const Config& c) {
  check_config(c);
  return team_products(c);
}

int64_t forward_workspace_size(const Config& c, bool training) {
  check_config(c);
  check_bf16(c, training);
  return forward_layout(c, training).total;
}

int64_t backward_scratch_size(const Config& c) {
  check_config(c);
  return backward_layout(c).total;
}

int64_t step_scratch_size(const Config& c) {
  Config one = c;
  one.T = 1;
  check_config(one);
  // z [B,4H], c_prev [B,H], m [B,H]
  return add(mul(c.B, 4 * c.H), mul(c.P > 0 ? 2 : 1, mul(c.B, c.H)));
}

int64_t packed_weights_size(const Config& c) {
  check_config(c);
  if (c.P > 0) return kPackedHeader;  // nothing is packed with a projection
  const int64_t W = team_products(c) ? packed_recurrent_size<float>(c.H, c.I) : 0;
  return add(add(kPackedHeader, packed_size(c)), W);
}

template <typename S>
void pack_weights(S* packed, const Weights<S>& w, const Config& cfg) {
  check_config(cfg);
  check_bf16(cfg, false, std::is_same_v<S, float>);
  require(packed, "packed", packed_weights_size(cfg));
  require_weights(w, cfg);
  const int64_t H = cfg.H, I = cfg.I, O = cfg.O(), layout = packed_layout<S>(cfg);
  const PackedHeader h{
      kPackedMagic, int64_t(sizeof(S)), I, H, O, int64_t(cfg.bf16_weights), layout, 0};
  std::memcpy(packed, &h, sizeof h);
  if (layout == 0) return;
  S* Rp = packed + kPackedHeader;
  S* Wp = Rp + packed_size(cfg);
  const bool with_W = team_inputs(cfg), bf16_panels = cfg.bf16_weights && packed_bf16_enabled();
  parallel_for(recurrent_blocks<S>(H), [&](int64_t u) {
    pack_weight_block(Rp, Wp, w.R, w.W, H, I, O, u, bf16_panels, with_W);
  });
  // bf16_weights without bfloat16 panels: the forward packs copies rounded
  // to bfloat16; packing only moves elements (and pads with zeros), so
  // rounding the panels gives the same.
  if constexpr (std::is_same_v<S, float>)
    if (cfg.bf16_weights && !bf16_panels) {
      round_weights(Rp, Rp, packed_recurrent_size<float>(H, O));
      if (with_W) round_weights(Wp, Wp, packed_recurrent_size<float>(H, I));
    }
}

template <typename S>
void lstm_forward(S* y, S* hT, S* cT, MaybeOut<S> cell_states, S* ws, In<S> x, In<S> h0, In<S> c0,
                  const Weights<S>& w, const Config& cfg, bool training) {
  use_serial_blas();  // lstm_ext parallelises; the BLAS runs single-threaded
  check_config(cfg);
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  check_bf16(cfg, training, std::is_same_v<S, float>);
  const ForwardLayout L = forward_layout(cfg, training);
  require_forward<S>(y, hT, cT, ws, L.total, x, w, cfg);
  const S* prepacked = packed_panels(w, cfg);  // w.packed's panels, or nullptr
  const Schedule s = make_schedule(cfg);
  const S clip = S(cfg.clip);

  S *Xp = ws + L.xp, *Z = ws + L.z, *Hp = ws + L.hp, *M = ws + L.m;
  // c_{k} rows in schedule order; k = -1 is c0. Inference keeps one [B,H] state.
  auto c_at = [&](int64_t k) {
    if (training) return ws + L.c + (k < 0 ? 0 : B + s.offset[k]) * H;
    return ws + L.cs + ((k + 1) & 1) * B * H;  // two buffers, so c never aliases c_prev
  };
  // R packed (recurrent.h), with bf16_weights as bfloat16 panels where the
  // CPU has AVX-512F (else as floats, rounded first: the same bits).
  const bool bf16 = cfg.bf16_weights;
  const bool packed = P == 0 && packed_recurrent_enabled();
  const bool bf16_panels = packed && bf16 && packed_bf16_enabled();
  const bool team_input = packed && team_inputs(cfg);  // x W^T by the kernel, not the BLAS
  // team_weight_grads: the team packs x and h_{t-1} by columns for backward's
  // dW and dR (where backward's kernel can read them), and says so in the
  // workspace; backward then reads x and h_{t-1} nowhere else, so the
  // forward keeps no other copy of them (Xp and Hp's room stays unused).
  const bool xh_room = training && team_weight_grads(cfg);  // L.xb, L.hb and L.xh_flag
  bool packs_xh = false;
  if constexpr (std::is_same_v<S, float>)
    packs_xh = xh_room && team_input && unpacked_product_enabled();
  if (xh_room) ws[L.xh_flag] = S(packs_xh);
  // h_{k-1}, the input of step k. In inference without gathers, step k's rows
  // of y are [B,O] in order: each step writes its h there and the next reads
  // it (no copy; 2 % of a B = 64 forward went to copying h into y: inference
  // 0.96-1.00 of the time, training 0.97-1.03, so only inference;
  // dev/perf-notes.md 77), and so does training where it packs h_{t-1} for
  // backward (packs_xh). Else two [B,O] buffers, step k writes the other,
  // and y gets a copy.
  const bool direct = (!training || packs_xh) && !gathers(cfg);
  // Training with every row at every step: step k writes h_k straight into
  // the rows of h_{t-1} that backward reads for step k + 1 (Hp), and step
  // k + 1 reads it there: no copy into Hp (dev/perf-notes.md, 84). With
  // lengths a step's rows there are fewer than the step before's.
  const bool into_hp = training && !cfg.lengths && !packs_xh;
  // Training keeps x for backward in Xp, as gathers keep the rows they use:
  // copied there by the threads of the input products (no private copy of x
  // by the caller, made on one thread; dev/perf-notes.md, 84).
  const bool keeps_x = training && !gathers(cfg) && !packs_xh;
  auto h_at = [&](int64_t k) {
    if (into_hp && k < s.K) return Hp + s.offset[k] * O;
    return direct && k > 0 ? y + (k - 1) * B * O : ws + L.h + (k & 1) * B * O;
  };
  gather_state(h_at(0), h0, s, B, O);
  gather_state(c_at(-1), c0, s, B, H);
  if (cfg.lengths) {  // zeros past each sequence's end (in reverse every row is written)
    std::fill(y, y + T * B * O, S(0));
    if (cell_states) std::fill(cell_states, cell_states + T * B * H, S(0));
  }
  // Where the products read R and W packed: w.packed's panels (only ever
  // given where the packing is this call's: packed_panels), or the
  // workspace's, which the team fills in its first chunk.
  // A forward of one step in inference reads R and W once: for few rows
  // (kUnpackedRows) the products take them as they are
  // (recurrent_block_unpacked, the same bits), not packed first.
  bool unpacked = false;
  if constexpr (std::is_same_v<S, float>)
    unpacked = packed && !prepacked && !training && !bf16 && T == 1 &&
               (B <= kUnpackedRows ||
                (B <= 2 * kUnpackedRows && weight_elements(cfg) >= kUnpackedWeights)) &&
               unpacked_product_enabled();
  const bool pack = packed && !prepacked && !unpacked;
  const S* Rp = prepacked ? prepacked : ws + L.rp;
  const S* Wp = prepacked ? prepacked + packed_size(cfg) : ws + L.wp;
  const bool far = large_weights(cfg);  // the kernel's fetch_ahead
  const int64_t blocks = recurrent_blocks<S>(H);
  // What the products read: w, or (bf16_weights) its matrices rounded to
  // bfloat16; bfloat16 panels are rounded as they are packed.
  Weights<S> wq = w;
  // Written and read by intrinsics only: R and (team_input) W as bfloat16 panels.
  const uint16_t *Rq = reinterpret_cast<const uint16_t*>(Rp),
                 *Wq = reinterpret_cast<const uint16_t*>(Wp);
  if constexpr (std::is_same_v<S, float>)
    if (bf16) {
      // Rounded where something reads the rounded matrix: the BLAS, or the
      // packing into float panels.
      S* at = ws + L.wq;
      if (!team_input || (pack && !bf16_panels)) round_weights(at, w.W, G * I), wq.W = at;
      if (!packed || (pack && !bf16_panels))
        round_weights(at + G * I, w.R, G * O), wq.R = at + G * I;
      if (P > 0) round_weights(at + G * (I + O), w.W_hr, P * H), wq.W_hr = at + G * (I + O);
    }
  // Block u's packing of R (and with team_input of W), and its share of
  //   z [nb,4H] += a [nb,K] M^T,   M = R (K = O), or with input W (K = I).
  // (With bfloat16 panels wq's W and R are w's: they are rounded as packed.)
  auto pack_block = [&](int64_t u) {
    pack_weight_block(ws + L.rp, ws + L.wp, wq.R, wq.W, H, I, O, u, bf16_panels, team_input);
  };
  // Over a's columns [c0, c1) (K = I or O): x W^T written to z (input), or
  // h R^T added to it.
  auto block_product = [&](S* z, const S* a, int64_t nb, int64_t u, int64_t c0, int64_t c1,
                           bool input = false) {
    const int64_t K = input ? I : O;
    if constexpr (std::is_same_v<S, float>) {
      if (unpacked)
        return recurrent_block_unpacked(z, G, a, K, input ? w.W : w.R, nb, H, K, u, c0, c1, input);
      if (bf16_panels)
        return recurrent_block_bf16(z, G, a, K, input ? Wq : Rq, nb, H, K, u, c0, c1, far, input);
    }
    recurrent_block(z, G, a, K, input ? Wp : Rp, nb, H, K, u, c0, c1, far, input);
  };

  // Training with small weights keeps R and W packed by columns for backward
  // (training_keeps_weights): the panels [t/n, (t+1)/n) of each, for thread t
  // of n; in the team where it runs (packing its own), else here.
  const bool keep = training && training_keeps_weights(cfg);
  auto keep_panels = [&](int64_t t, int64_t n) {
    for (int64_t u = blocks * t / n; u < blocks * (t + 1) / n; ++u)
      pack_columns(ws + L.rb, w.R, G, O, u);
    const int64_t pi = (I + kPanel<S> - 1) / kPanel<S>;
    for (int64_t p = pi * t / n; p < pi * (t + 1) / n; ++p) pack_columns(ws + L.wb, w.W, G, I, p);
  };
  if (keep && (!packed || s.K == 0)) keep_panels(0, 1);

  const bool rotate = B < kRotateRows;
  const int64_t chunk = training ? std::max<int64_t>(s.K, 1) : inference_chunk(B);
  const int64_t sub = steps_for_rows(kTeamInputRows, B);  // steps a team_input product covers
  for (int64_t k0 = 0; k0 < s.K; k0 += chunk) {
    const int64_t k1 = std::min(s.K, k0 + chunk), r0 = s.offset[k0], rows = s.offset[k1] - r0;
    const int64_t at = training ? r0 : 0;  // where this chunk sits in Xp and Z
    const S* xin = x + r0 * I;
    if (gathers(cfg)) {
      gather_steps(Xp + at * I, x, s, k0, k1, B, I);
      xin = Xp + at * I;
    }
    if (!team_input) {
      gemm(Op::N, Op::T, rows, G, I, S(1), xin, I, wq.W, I, S(0), Z + at * G, G);
      if (keeps_x)
        in_pieces(rows * I,
                  [&](int64_t i, int64_t m) { copy_elements(Xp + at * I + i, xin + i, m); });
    }
    auto z_at = [&](int64_t k) { return Z + (at + s.offset[k] - r0) * G; };  // [batch[k],4H]
    // team_input: x W^T [n,4H] of steps [k, ke), the units of blocks [u0, u1).
    // With keeps_x, thread t of n then copies its share of those rows of x
    // into Xp, while they are in its cache.
    auto input_products = [&](int64_t k, int64_t ke, int64_t u0, int64_t u1, int t, int n) {
      const int64_t a = s.offset[k] - r0, e = s.offset[ke] - r0;  // rows [a, e) of the chunk
      for (int64_t u = u0; u < u1; ++u) block_product(z_at(k), xin + a * I, e - a, u, 0, I, true);
      const int64_t q0 = a + (e - a) * t / n, q1 = a + (e - a) * (t + 1) / n;
      if (keeps_x) copy_elements(Xp + (at + q0) * I, xin + q0 * I, (q1 - q0) * I);
      if (packs_xh) pack_column_rows(ws + L.xb, s.N(), at + q0, xin + q0 * I, I, q1 - q0, 0, I);
    };

    dispatch(
        [&](auto save, auto peep, auto clipped, auto coupled) {
          // The gate pass of step k for units [j0, j1): c_k, and m_k into m.
          auto cells = [&](int64_t k, S* m, int64_t j0, int64_t j1) {
            LSTM_EXT_ON_CPU(cell_forward_rows, decltype(save)::value, decltype(peep)::value,
                            decltype(clipped)::value, decltype(coupled)::value, S)
            (z_at(k), c_at(k), m, c_at(k - 1), w.b, w.peephole, clip, s.batch[k], H, j0, j1);
          };
          if (packed) {
            // Each thread owns a range of unit blocks for the whole chunk: it
            // packs them (in the first chunk, unless w.packed), computes their
            // products, gate pass and outputs. Step k+1 reads all of h_k, the
            // others' part once they have finished step k
            // (Barrier::wait_finished). With rotate, each block sums over h's
            // columns from its own first unit on, round to it again, so a
            // thread starts on the columns it wrote itself while the others may
            // still be finishing (the order depends on the block alone: the
            // same bits at any thread count). Later chunks read blocks other
            // threads packed: the end of a team is a synchronisation point.
            // The chunk's multiply-adds (and packing's elements), in double:
            // the product can pass 2^63 for sizes the checks allow.
            const double work = double(rows + (pack && k0 == 0)) * double(G) * double(I + O);
            parallel_team(int(std::min<int64_t>(blocks, team_size(s.batch[k0], H, O))), work,
                          [&](int t, int n, Barrier& barrier) {
                            const int64_t u0 = blocks * t / n, u1 = blocks * (t + 1) / n;
                            const int64_t j0 = std::min(H, u0 * kPanel<S>),
                                          j1 = std::min(H, u1 * kPanel<S>);
                            if (k0 == 0) {
                              if (pack)
                                for (int64_t u = u0; u < u1; ++u) pack_block(u);
                              if (keep) keep_panels(t, n);
                              if (packs_xh)  // this thread's columns of h_0
                                pack_column_rows(ws + L.hb, s.N(), 0, h_at(0), O, s.batch[0], j0,
                                                 j1);
                            }
                            if (team_input)
                              input_products(k0, std::min(k1, k0 + sub), u0, u1, t, n);
                            for (int64_t k = k0; k < k1; ++k) {
                              const int64_t nb = s.batch[k];
                              const S* hin = h_at(k);
                              S* hout = h_at(k + 1);
                              if (training && !into_hp && !packs_xh)
                                copy_columns(Hp + s.offset[k] * O, hin, nb, O, j0, j1);
                              // Block by block, each block's gate pass right after
                              // its product: the pass's chains of exp and division
                              // then run while the next block's product does. From
                              // kWholePassRows rows, one pass over all the thread's
                              // units after its products instead. Rotated, the
                              // first block sums this thread's columns [a, j1)
                              // before the wait, then [j1, O) and [0, a); later
                              // blocks [a, O) and [0, a), the same order in fewer
                              // calls (perf-notes, 60). hout (without direct and
                              // into_hp, the buffer the others read in step k - 1)
                              // is written after the wait.
                              for (int64_t u = u0; u < u1; ++u) {
                                const int64_t a = u * kPanel<S>;
                                if (rotate && u == u0) {
                                  block_product(z_at(k), hin, nb, u, a, j1);
                                  barrier.wait_finished(k - k0);
                                  block_product(z_at(k), hin, nb, u, j1, O);
                                  block_product(z_at(k), hin, nb, u, 0, a);
                                } else if (rotate) {
                                  block_product(z_at(k), hin, nb, u, a, O);
                                  block_product(z_at(k), hin, nb, u, 0, a);
                                } else {
                                  if (u == u0) barrier.wait_finished(k - k0);
                                  block_product(z_at(k), hin, nb, u, 0, O);
                                }
                                if (nb < kWholePassRows)
                                  cells(k, hout, a, std::min(H, a + kPanel<S>));
                              }
                              if (nb >= kWholePassRows) cells(k, hout, j0, j1);
                              if (!direct) scatter_step(y, hout, s, k, B, O, j0, j1);
                              if (cell_states)
                                scatter_step(cell_states, c_at(k), s, k, B, H, j0, j1);
                              barrier.finished(t, k - k0 + 1);
                              if (packs_xh && k + 1 < s.K)  // its columns of h_k
                                pack_column_rows(ws + L.hb, s.N(), s.offset[k + 1], hout, O,
                                                 s.batch[k + 1], j0, j1);
                              // The next steps' input products need nothing
                              // the other threads write.
                              if (team_input && (k + 1 - k0) % sub == 0 && k + 1 < k1)
                                input_products(k + 1, std::min(k1, k + 1 + sub), u0, u1, t, n);
                            }
                          });
            return;
          }
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t nb = s.batch[k];
            const S* hin = h_at(k);
            S* hout = h_at(k + 1);
            if (training && !into_hp) copy_elements(Hp + s.offset[k] * O, hin, nb * O);
            recurrent_product(z_at(k), ws + L.zt, hin, wq.R, nb, G, O);
            S* m = P > 0 ? M + (training ? s.offset[k] * H : 0) : hout;  // [nb,H]
            over_units(nb, H, [&](int64_t j0, int64_t j1) { cells(k, m, j0, j1); });
            if (P > 0) gemm(Op::N, Op::T, nb, P, H, S(1), m, H, wq.W_hr, H, S(0), hout, P);
            if (!direct) scatter_step(y, hout, s, k, B, O);
            if (cell_states) scatter_step(cell_states, c_at(k), s, k, B, H);
          }
        },
        training, w.peephole != nullptr, cfg.clip > 0, cfg.input_forget);
  }

  for (int64_t j = 0; j < B; ++j) {  // each row's state after its last valid step
    copy_elements(hT + s.perm[j] * O, h_at(s.len[j]) + j * O, O);
    copy_elements(cT + s.perm[j] * H, c_at(s.len[j] - 1) + j * H, H);
  }
}

template <typename S>
void lstm_backward(S* dx, S* dh0, S* dc0, const Grads<S>& g, S* scr, In<S> ws, In<S> x, In<S> dy,
                   In<S> dhT, In<S> dcT, const Weights<S>& w, const Config& cfg) {
  use_serial_blas();  // lstm_ext parallelises; the BLAS runs single-threaded
  check_config(cfg);
  if (cfg.bf16_weights)  // no forward with them leaves a workspace for backward
    throw std::invalid_argument("lstm_ext: backward has no bf16_weights (an inference option)");
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  const ForwardLayout L = forward_layout(cfg, true);
  const BackwardLayout BL = backward_layout(cfg);
  require_backward<S>(dx, dh0, dc0, g, scr, BL.total, ws, L.total, x, w, cfg,
                      training_keeps_weights(cfg), false);  // x: the workspace holds it
  const Schedule s = make_schedule(cfg);
  const S clip = S(cfg.clip);

  const S *Xp = ws + L.xp, *Z = ws + L.z, *Hp = ws + L.hp, *M = ws + L.m;
  auto c_at = [&](int64_t k) { return ws + L.c + (k < 0 ? 0 : B + s.offset[k]) * H; };
  S *dZ = scr + BL.dz, *DH = scr + BL.dh_all, *dm = scr + BL.dm, *dh = scr + BL.dh,
    *dc = scr + BL.dc, *dXp = gathers(cfg) ? scr + BL.dxp : dx;
  gather_state(dh, dhT, s, B, O);
  gather_state(dc, dcT, s, B, H);
  // Summed over the rows of each step, from the last step to the first, by
  // the gate pass (each unit's sums by the one task that owns it).
  std::fill(g.db, g.db + G, S(0));
  if (w.peephole) std::fill(g.dpeephole, g.dpeephole + 3 * H, S(0));

  // dy at step k joins dh in the gate pass where the step's rows of dy are O
  // apart (no lengths) and dh is what the pass reads (P = 0): no pass of its
  // own, and its loads beside the saved gates' (perf-notes, 89). Else
  // dh[j][u] += dy first, for rows j < batch[k] and columns [u0, u1).
  const bool dy_in_pass = dy && !cfg.lengths && P == 0;
  auto add_dy = [&](int64_t k, int64_t u0, int64_t u1) {
    if (dy && !dy_in_pass)
      for (int64_t j = 0; j < s.batch[k]; ++j) {
        const S* dyj = dy + s.row(k, j, B) * O;
        for (int64_t u = u0; u < u1; ++u) dh[j * O + u] += dyj[u];
      }
  };
  const bool packed = P == 0 && s.K > 0 && packed_recurrent_enabled();
  // training_keeps_weights: R and W packed by columns in the workspace (the
  // kernel's), else R packed here. The BLAS reads them unpacked into dW and
  // dR, which the last products overwrite.
  const bool keep = training_keeps_weights(cfg);
  const bool team_dx = packed && keep;  // dx by the kernel on W kept packed, not the BLAS
  const bool chain = team_dx && team_size(B, H, O) <= kChainTeam;  // dR and dW in the team too
  // The forward packed x and h_{t-1} (its packs_xh) and kept no other copy:
  // dW and dR from them by weight_grads, in the team after its loop
  // (team_dw), or where this call's products take the BLAS (the kernel
  // switched off since the forward) in a team of their own.
  bool xh = false;
  if constexpr (std::is_same_v<S, float>)
    xh = team_weight_grads(cfg) && s.K > 0 && ws[L.xh_flag] == S(1);
  const bool team_dw = xh && team_dx && !chain;
  const S* Rb = keep ? ws + L.rb : scr + BL.rb;
  const S *Wr = w.W, *Rr = w.R;
  if (keep && !packed) {
    unpack_columns(g.dR, ws + L.rb, G, O);
    unpack_columns(g.dW, ws + L.wb, G, I);
    Wr = g.dW, Rr = g.dR;
  }
  const bool far = large_weights(cfg);  // the kernel's fetch_ahead
  // xh: dW [4H,I] = dz^T x and dR [4H,O] = dz^T h, rows g H + [j0, j1)
  // of each gate g, the rows of dz in chunks of kWeightChunk.
  auto weight_grads = [&](int64_t j0, int64_t j1) {
    if constexpr (std::is_same_v<S, float>) {
      const int64_t w = j1 - j0, ld = kWeightChunk + 16, N = s.N(),
                    Q = packed_row<S>();
      S* dzt = scr + BL.dzt + 4 * j0 * ld;  // [4][w,ld] this thread's
      for (int64_t r0 = 0; r0 < N; r0 += kWeightChunk) {
        const int64_t kc = std::min(kWeightChunk, N - r0);
        for (int64_t q = 0; q < 4; ++q)
          transpose_columns(dzt + q * w * ld, ld, dZ + r0 * G + q * H + j0, G, kc, w);
        for (int64_t q = 0; q < 4; ++q) {  // from row r0 of x's and h's panels
          const S* a = dzt + q * w * ld;    // [w,kc]
          column_product(g.dW + (q * H + j0) * I, I, a, ld, ws + L.xb + r0 * Q, w, N, 0, kc,
                         0, I, false, r0 == 0);
          column_product(g.dR + (q * H + j0) * O, O, a, ld, ws + L.hb + r0 * Q, w, N, 0, kc,
                         0, O, false, r0 == 0);
        }
      }
    }
  };
  const int64_t dsub = steps_for_rows(kTeamDxRows, B);
  // In reverse without lengths, where the team's dx products are a step each
  // (dsub = 1), each step's dx goes straight to its rows of dx: no scatter
  // after (dev/perf-notes.md, 84). Without gathers dXp is dx.
  const bool dx_in_place = team_dx && !chain && cfg.reverse && !cfg.lengths && dsub == 1;
  dispatch(
      [&](auto peep, auto clipped, auto coupled) {
        // The gate pass of step k for units [j0, j1): dz_k, and dc.
        auto cells = [&](int64_t k, const S* dmk, int64_t j0, int64_t j1) {
          LSTM_EXT_ON_CPU(cell_backward_rows, decltype(peep)::value, decltype(clipped)::value,
                          decltype(coupled)::value, S)
          (dZ + s.offset[k] * G, dc, g.db, g.dpeephole, Z + s.offset[k] * G, c_at(k - 1), c_at(k),
           dmk, w.peephole, clip, s.batch[k], H, j0, j1,
           dy_in_pass ? dy + s.row(k, 0, B) * O : nullptr, O);
        };
        const int64_t K = s.K;
        if (chain) {
          // kChainTeam: thread 0 the recurrence; thread 1 chunk i after
          // thread 0's step K - (i + 1) dsub (one thread: each chunk once its
          // steps are done); then each thread takes dW's next row block.
          const int64_t chunks = (K + dsub - 1) / dsub,
                        blocks = (G + kChainWeightBlock - 1) / kChainWeightBlock;
          std::atomic<int64_t> next_block{0};
          // Chunk i, steps [k, ke) with ke = K - i dsub: their dx [n,I] =
          // dz W, and dR [4H,O] += dz^T h, the chunks in order.
          auto chunk = [&](int64_t i) {
            const int64_t ke = K - i * dsub, k = std::max<int64_t>(0, ke - dsub);
            const int64_t r0 = s.offset[k], rows = s.offset[ke] - r0;
            column_product(dXp + r0 * I, I, dZ + r0 * G, G, ws + L.wb, rows, G, 0, G, 0, I, far,
                           true);
            gemm(Op::T, Op::N, G, O, rows, S(1), dZ + r0 * G, G, Hp + r0 * O, O, S(i > 0), g.dR, O);
          };
          parallel_team(
              int(kChainTeam),
              2.0 * double(s.offset[K]) * double(G) * double(I + O),  // dz R, dz W, dR, dW
              [&](int t, int n, Barrier& barrier) {
                if (t == 0) {
                  for (int64_t k = K - 1; k >= 0; --k) {
                    add_dy(k, 0, O);
                    cells(k, dh, 0, H);
                    column_product(dh, O, dZ + s.offset[k] * G, G, Rb, s.batch[k], G, 0, G, 0, H,
                                   far, true);
                    barrier.finished(0, K - k);
                    if (n == 1 && ((K - k) % dsub == 0 || k == 0)) chunk((K - k - 1) / dsub);
                  }
                } else {
                  barrier.finished(t, K);  // its waits are for thread 0's steps
                  for (int64_t i = 0; i < chunks; ++i) {
                    barrier.wait_finished(std::min(K, (i + 1) * dsub));
                    chunk(i);
                  }
                }
                for (int64_t b; (b = next_block.fetch_add(1)) < blocks;) {  // dW [4H,I] = dz^T x
                  const int64_t q0 = b * kChainWeightBlock, q = std::min(G - q0, kChainWeightBlock);
                  gemm(Op::T, Op::N, q, I, s.offset[K], S(1), dZ + q0, G, Xp, I, S(0),
                       g.dW + q0 * I, I);
                }
              });
          return;
        }
        if (packed) {
          // Each thread owns a range of units and the same columns of dh
          // (O = H): its gate pass, then its columns of dz R once the others
          // have finished theirs (all of dz is there).
          const int64_t blocks = recurrent_blocks<S>(H);
          parallel_team(
              int(std::min<int64_t>(blocks, team_size(s.batch[0], H, O))),
              2.0 * double(s.offset[K]) * double(G) * double(I + O),  // dz R, dz W, dR, dW
              [&](int t, int n, Barrier& barrier) {
                const int64_t u0 = blocks * t / n, u1 = blocks * (t + 1) / n;
                const int64_t j0 = std::min(H, u0 * kPanel<S>), j1 = std::min(H, u1 * kPanel<S>);
                if (!keep)
                  for (int64_t u = u0; u < u1; ++u) pack_columns(scr + BL.rb, w.R, G, O, u);
                // team_dx: this thread's panels [p0, p1) of dx's columns.
                const int64_t pi = (I + kPanel<S> - 1) / kPanel<S>, p0 = pi * t / n,
                              p1 = pi * (t + 1) / n;
                const int64_t i0 = std::min(I, p0 * kPanel<S>), i1 = std::min(I, p1 * kPanel<S>);
                // dx [n,I] = dz W of steps [k, ke), columns [i0, i1).
                auto dx_rows = [&](int64_t k, int64_t ke) {
                  const int64_t r0 = s.offset[k], rows = s.offset[ke] - r0;
                  S* to = dx_in_place ? dx + s.row(k, 0, B) * I : dXp + r0 * I;
                  column_product(to, I, dZ + r0 * G, G, ws + L.wb, rows, G, 0, G, i0, i1, far,
                                 true);
                };
                for (int64_t k = K - 1; k >= 0; --k) {
                  const int64_t nb = s.batch[k];
                  add_dy(k, j0, j1);
                  cells(k, dh, j0, j1);
                  // dz of the steps after k is whole: their dx while the
                  // other threads finish this step (chunks of dsub steps
                  // from the top).
                  barrier.finished(t, K - k);
                  if (team_dx && k + 1 < K && (K - k - 1) % dsub == 0)
                    dx_rows(k + 1, std::min(K, k + 1 + dsub));
                  barrier.wait_finished(K - k);
                  column_product(dh, O, dZ + s.offset[k] * G, G, Rb, nb, G, 0, G, j0, j1, far,
                                 true);
                }
                if (team_dx) dx_rows(0, K - (K - 1) / dsub * dsub);
                if (team_dw) weight_grads(j0, j1);
              });
          return;
        }
        for (int64_t k = s.K - 1; k >= 0; --k) {
          const int64_t nb = s.batch[k];
          add_dy(k, 0, O);  // dh = dL/dh_k in total (or with dy in the gate pass)
          const S* dmk = dh;
          if (P > 0) {
            copy_elements(DH + s.offset[k] * P, dh, nb * P);
            gemm(Op::N, Op::N, nb, H, P, S(1), dh, P, w.W_hr, H, S(0), dm, H);  // [nb,H]
            dmk = dm;
          }
          over_units(nb, H, [&](int64_t j0, int64_t j1) { cells(k, dmk, j0, j1); });
          gemm(Op::N, Op::N, nb, O, G, S(1), dZ + s.offset[k] * G, G, Rr, O, S(0), dh,
               O);  // dL/dh_{k-1} [nb,O]
        }
      },
      w.peephole != nullptr, cfg.clip > 0, cfg.input_forget);

  const int64_t N = s.N();
  if (!team_dx) gemm(Op::N, Op::N, N, I, G, S(1), dZ, G, Wr, I, S(0), dXp, I);  // [N,I]
  if (gathers(cfg) && !dx_in_place) {
    if (cfg.lengths) std::fill(dx, dx + T * B * I, S(0));  // as y in forward
    for (int64_t k = 0; k < s.K; ++k) scatter_step(dx, dXp + s.offset[k] * I, s, k, B, I);
  }
  const Gemm<S> dW{Op::T, Op::N, G, I, N, S(1), dZ, G, Xp, I, S(0), g.dW, I};  // [4H,I]
  const Gemm<S> dR{Op::T, Op::N, G, O, N, S(1), dZ, G, Hp, O, S(0), g.dR, O};  // [4H,O]
  if (chain || team_dw) {
    // dW and dR: computed in the team
  } else if (xh) {  // the kernel switched off since the forward: a team of their own
    const int64_t blocks = recurrent_blocks<S>(H);
    parallel_team(int(std::min<int64_t>(blocks, team_size(B, H, O))),
                  2.0 * double(N) * double(G) * double(I + O), [&](int t, int n, Barrier&) {
                    weight_grads(std::min(H, blocks * t / n * kPanel<S>),
                                 std::min(H, blocks * (t + 1) / n * kPanel<S>));
                  });
  } else if (I == O) {  // the same cost: side by side (blas.h)
    gemms({dW, dR});
  } else {
    gemm(dW), gemm(dR);
  }
  if (P > 0) gemm(Op::T, Op::N, P, H, N, S(1), DH, P, M, H, S(0), g.dW_hr, H);  // [P,H]
  scatter_state(dh0, dh, s, B, O);
  scatter_state(dc0, dc, s, B, H);
}

// lstm_step splits a step of at most kStepSplitRows rows and at least
// kStepSplitUnits units over two threads.
constexpr int64_t kStepSplitRows = 8, kStepSplitUnits = 64;

template <typename S>
void lstm_step(S* h_out, S* c_out, S* scr, In<S> x, In<S> h, In<S> c, const Weights<S>& w,
               const Config& cfg) {
  use_serial_blas();  // lstm_ext parallelises; the BLAS runs single-threaded
  const int64_t B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  if (cfg.bf16_weights)
    throw std::invalid_argument("lstm_ext: step has no bf16_weights (lstm_forward has)");
  require(scr, "scratch", step_scratch_size(cfg));
  require(h_out, "h_out", B * O);
  require(c_out, "c_out", B * H);
  require(x, "x", B * I);
  require_weights(w, cfg);
  S* z = scr;  // [B,4H]
  // The fused pass reads c_prev and writes c_out through unaliased pointers.
  S* c_prev = scr + B * G;  // [B,H]
  if (c)
    copy_elements(c_prev, c, B * H);
  else
    std::fill(c_prev, c_prev + B * H, S(0));
  S* m = P > 0 ? c_prev + B * H : h_out;  // [B,H]
  // By value: a team's worker takes its own copy (parallel_team_by_value).
  const S *b = w.b, *peephole = w.peephole;
  const S clip = S(cfg.clip);
  const bool coupled = cfg.input_forget;
  const auto cells = [=](int64_t j0, int64_t j1) {
    dispatch(
        [&](auto peep, auto clipped, auto coupled_) {
          LSTM_EXT_ON_CPU(cell_forward_rows, false, decltype(peep)::value, decltype(clipped)::value,
                          decltype(coupled_)::value, S)
          (z, c_out, m, c_prev, b, peephole, clip, B, H, j0, j1);
        },
        peephole != nullptr, clip > 0, coupled);
  };
  if (B <= kStepSplitRows && H >= kStepSplitUnits && P == 0) {
    // Streaming: two halves of the units, each one thread's where there are
    // two. A thread's rows of W and R (256 KiB at H = 128) then stay in its
    // core's L2 from call to call instead of coming from L3 (dev/perf-notes.md,
    // 13 and 18). The halves depend on the shape alone: the same bits at any
    // thread count.
    const int64_t cut[3] = {0, std::min(H, (H / 2 + 7) / 8 * 8), H};
    const double work = double(B) * double(G) * double(I + O);
    if constexpr (std::is_same_v<S, float>) {
      if (B == 1 && unpacked_product_enabled()) {
        // One row in float where the AVX-512F kernel runs: each thread the
        // four gates' rows of its units, W's and R's in one pass, by our
        // kernel (row_product_unpacked: OpenBLAS's sgemv read them at 0.4 of
        // the core's L2 rate; dev/perf-notes.md 79), then their cells, with
        // no wait between (80), unless an output overlaps x or h (h_out may
        // be h): then all of x and h are read before any output is written.
        const S *W = w.W, *R = h ? w.R : nullptr;
        const auto overlap = [](const S* a, int64_t na, const S* b, int64_t nb) {
          const auto at = [](const S* p) { return reinterpret_cast<uintptr_t>(p); };
          return b && at(a) < at(b + nb) && at(b) < at(a + na);
        };
        const bool in_place = overlap(h_out, B * O, x, B * I) || overlap(h_out, B * O, h, B * O) ||
                              overlap(c_out, B * H, x, B * I) || overlap(c_out, B * H, h, B * O);
        parallel_team_by_value(2, work, [=](int t, int n, Barrier& barrier) {
          for (int p = t; p < 2; p += n)
            for (int64_t q = cut[p]; q < G; q += H)  // gate rows q .. q + units
              row_product_unpacked(z + q, W + q * I, I, x, I, R ? R + q * O : nullptr, O, h, O,
                                   cut[p + 1] - cut[p]);
          if (in_place) {
            barrier.finished(t, 1);
            barrier.wait_finished(1);
          }
          for (int p = t; p < 2; p += n) cells(cut[p], cut[p + 1]);
        });
        return;
      }
    }
    // Elsewhere the products in two halves of the gate rows (i and f, g and
    // o: two GEMV calls each, where halves of the units took eight), then
    // the gate pass in two halves of the units.
    const auto products = [&](int64_t q0, int64_t q1) {  // z[:, q0 .. q1)
      gemm(Op::N, Op::T, B, q1 - q0, I, S(1), x, I, w.W + q0 * I, I, S(0), z + q0, G);
      if (h) gemm(Op::N, Op::T, B, q1 - q0, O, S(1), h, O, w.R + q0 * O, O, S(1), z + q0, G);
    };
    parallel_team(2, work, [&](int t, int n, Barrier& barrier) {
      for (int p = t; p < 2; p += n) products(p * 2 * H, (p + 1) * 2 * H);
      barrier.finished(t, 1);  // all of h read before h_out, which may alias it, is written
      barrier.wait_finished(1);
      for (int p = t; p < 2; p += n) cells(cut[p], cut[p + 1]);
    });
    return;
  }
  gemm(Op::N, Op::T, B, G, I, S(1), x, I, w.W, I, S(0), z, G);
  // h is read in full here, before h_out (which may alias it) is written.
  if (h) gemm(Op::N, Op::T, B, G, O, S(1), h, O, w.R, O, S(1), z, G);
  cells(0, H);
  if (P > 0) gemm(Op::N, Op::T, B, P, H, S(1), m, H, w.W_hr, H, S(0), h_out, P);
}

#define LSTM_EXT_INSTANTIATE(S)                                                                  \
  template void lstm_forward<S>(S*, S*, S*, MaybeOut<S>, S*, In<S>, In<S>, In<S>,                \
                                const Weights<S>&, const Config&, bool);                         \
  template void lstm_backward<S>(S*, S*, S*, const Grads<S>&, S*, In<S>, In<S>, In<S>, In<S>,    \
                                 In<S>, const Weights<S>&, const Config&);                       \
  template void lstm_step<S>(S*, S*, S*, In<S>, In<S>, In<S>, const Weights<S>&, const Config&); \
  template void pack_weights<S>(S*, const Weights<S>&, const Config&);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(double)

}  // namespace lstm_ext
