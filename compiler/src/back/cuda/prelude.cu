// ---- sslc device library ---------------------------------------------------------------
// Fixed code shared by every generated kernel: how threads are mapped onto elements, warp
// reductions, the reference evaluator's arithmetic conventions, and the tiled similarity
// kernels. Generated kernels hand their element computations to these templates as lambdas,
// so one reviewed implementation serves every objective. NVRTC ships no CUDA headers, hence
// inline PTX for tensor cores and conversions.

namespace sslc {

__device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
__device__ __forceinline__ float nan() { return __int_as_float(0x7fffffff); }

// ---- arithmetic with the reference evaluator's conventions --------------------------------

__device__ __forceinline__ float maximum(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float minimum(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ long long maximum(long long a, long long b) { return a > b ? a : b; }
__device__ __forceinline__ long long minimum(long long a, long long b) { return a < b ? a : b; }

// PyTorch's `x ** y` where exp(y log x) is NaN: 0 ** y = 0 for y > 0, x ** 0 = 1, and a
// negative base with an odd integer exponent keeps its sign.
__device__ __forceinline__ float pow_ref(float x, float y) {
    const float magnitude = expf(logf(fabsf(x)) * y);
    const bool odd = fabsf(y - floorf(y * 0.5f) * 2.0f) == 1.0f;
    const float signed_magnitude = (x < 0.0f && odd) ? -magnitude : magnitude;
    return y == 0.0f ? 1.0f : signed_magnitude;
}

// log(1 + exp(x)) without overflow; d softplus = sigmoid.
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float square(float x) { return x * x; }

// Python's remainder: the result has the sign of the divisor.
__device__ __forceinline__ float rem_ref(float a, float b) { return a - b * floorf(a / b); }

// Integer arithmetic goes through doubles and truncates, as the reference does.
__device__ __forceinline__ long long div_ref(long long a, long long b) {
    return (long long)((double)a / (double)b);
}
__device__ __forceinline__ long long rem_ref(long long a, long long b) {
    return (long long)((double)a - (double)b * floor((double)a / (double)b));
}
__device__ __forceinline__ long long pow_ref(long long a, long long b) {
    const double x = (double)a, y = (double)b;
    const double magnitude = exp(log(fabs(x)) * y);
    const bool odd = fabs(y - floor(y * 0.5) * 2.0) == 1.0;
    const double signed_magnitude = (x < 0.0 && odd) ? -magnitude : magnitude;
    return (long long)(y == 0.0 ? 1.0 : signed_magnitude);
}

// ---- thread mappings --------------------------------------------------------------------

// A kernel of its own: every thread of the grid shares the work.
struct Grid {
    __device__ long long thread() const { return blockIdx.x * (long long)blockDim.x + threadIdx.x; }
    __device__ long long threads() const { return (long long)gridDim.x * blockDim.x; }
};

// One step inside a loop kernel: the block's threads share the work, and `__syncthreads`
// orders the steps.
struct Block {
    __device__ long long thread() const { return threadIdx.x; }
    __device__ long long threads() const { return blockDim.x; }
};

// `f(i)` for every element `i < n`.
template <class Ctx, class F>
__device__ __forceinline__ void map(Ctx ctx, long long n, F f) {
    for (long long i = ctx.thread(); i < n; i += ctx.threads()) f(i);
}

// ---- reductions -------------------------------------------------------------------------
// Each reducer folds values one at a time (`add`) and merges with the lane `mask` away
// (`combine`); every lane of the warp must call `combine` together.

constexpr unsigned FULL_MASK = 0xffffffffu;

template <class T> __device__ __forceinline__ T lowest();
template <> __device__ __forceinline__ float lowest<float>() { return -inf(); }
template <> __device__ __forceinline__ long long lowest<long long>() { return -9223372036854775807LL - 1; }
template <class T> __device__ __forceinline__ T highest();
template <> __device__ __forceinline__ float highest<float>() { return inf(); }
template <> __device__ __forceinline__ long long highest<long long>() { return 9223372036854775807LL; }

template <class T>
struct Sum {
    using Out = T;
    T total = T(0);
    __device__ void add(T v, long long) { total += v; }
    __device__ void combine(int mask) { total += __shfl_xor_sync(FULL_MASK, total, mask); }
    __device__ T result() const { return total; }
};

template <class T>
struct Max {
    using Out = T;
    T best = lowest<T>();
    __device__ void add(T v, long long) { best = maximum(best, v); }
    __device__ void combine(int mask) { best = maximum(best, __shfl_xor_sync(FULL_MASK, best, mask)); }
    __device__ T result() const { return best; }
};

template <class T>
struct Min {
    using Out = T;
    T best = highest<T>();
    __device__ void add(T v, long long) { best = minimum(best, v); }
    __device__ void combine(int mask) { best = minimum(best, __shfl_xor_sync(FULL_MASK, best, mask)); }
    __device__ T result() const { return best; }
};

// log(sum(exp(x))) in one pass: the running maximum `top` and the sum scaled by exp(-top).
// A row of -inf gives -inf, as the reference's stable formula does.
struct LogSumExp {
    using Out = float;
    float top = -inf();
    float scaled = 0.0f;
    __device__ void merge(float other_top, float other_scaled) {
        const float m = fmaxf(top, other_top);
        if (m == -inf()) return;
        scaled = scaled * expf(top - m) + other_scaled * expf(other_top - m);
        top = m;
    }
    __device__ void add(float v, long long) { merge(v, 1.0f); }
    __device__ void combine(int mask) {
        const float other_top = __shfl_xor_sync(FULL_MASK, top, mask);
        const float other_scaled = __shfl_xor_sync(FULL_MASK, scaled, mask);
        merge(other_top, other_scaled);
    }
    __device__ float result() const { return scaled > 0.0f ? top + logf(scaled) : -inf(); }
};

// Index of the first maximum.
struct ArgMax {
    using Out = long long;
    float best = -inf();
    long long at = -1;
    __device__ void take(float v, long long i) {
        if (i < 0) return;
        if (at < 0 || v > best || (v == best && i < at)) {
            best = v;
            at = i;
        }
    }
    __device__ void add(float v, long long i) { take(v, i); }
    __device__ void combine(int mask) {
        const float other_best = __shfl_xor_sync(FULL_MASK, best, mask);
        const long long other_at = __shfl_xor_sync(FULL_MASK, at, mask);
        take(other_best, other_at);
    }
    __device__ long long result() const { return at < 0 ? 0 : at; }
};

template <class R>
__device__ __forceinline__ void combine_warp(R& r) {
    for (int mask = 16; mask > 0; mask /= 2) r.combine(mask);
}

// `out[o] = reduce_k value(o, k)` for `o < outputs`, `k < length`: one warp per output.
template <class R, class Ctx, class F>
__device__ __forceinline__ void reduce(Ctx ctx, typename R::Out* out, long long outputs, long long length, F value) {
    const int lane = threadIdx.x % 32;
    for (long long o = ctx.thread() / 32; o < outputs; o += ctx.threads() / 32) {
        R r;
        for (long long k = lane; k < length; k += 32) r.add(value(o, k), k);
        combine_warp(r);
        if (lane == 0) out[o] = r.result();
    }
}

// ---- pairwise tiles -----------------------------------------------------------------------
// `w(o, n, s)` for every pair of an outer row `o` and an inner row `n`, where `s` is their dot
// product, is computed one 64 x 64 tile at a time and never stored: the tile of dot products
// comes from staged chunks of both operands (tensor cores unless the precision is F32), the
// generated `w` maps it, and the result is reduced per outer row (online for log-sum-exp) or
// multiplied with the matching rows of `v`. Backward passes call the same templates: the
// tiles are recomputed rather than stored.

constexpr int PAIR_THREADS = 256;
constexpr int TILE = 64;    // outer and inner rows per tile
constexpr int CHUNK = 32;   // feature columns staged per step
constexpr int VCOLS = 128;  // columns of `v` accumulated per block
constexpr int VROWS = 32;   // rows of `v` staged per step
constexpr int CHUNK_STRIDE = CHUNK + 4;   // padding keeps fragment loads conflict-free
constexpr int TILE_STRIDE = TILE + 4;
constexpr int VCOLS_STRIDE = VCOLS + 8;

// Operand precisions of the tile products; accumulation is always f32.
struct F32 {};
struct TF32 {};
struct BF16 {};

__device__ __forceinline__ float round_operand(F32, float x) { return x; }
__device__ __forceinline__ float round_operand(TF32, float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}
__device__ __forceinline__ float round_operand(BF16, float x) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(0.0f), "f"(x));
    return __uint_as_float(r << 16);
}

// Two bf16-rounded floats as one register: the lower half holds the element with the lower
// k index, as mma.sync expects.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One m16n8 step of `acc += A B` on a warp over k .. k + KStep, with `a(r, k)` = A[r][k]
// (16 rows) and `b(n, k)` = B[k][n] (8 columns). Fragment layouts are the PTX ISA's for
// m16n8k8 (tf32) and m16n8k16 (bf16), with lane = 4 * group + member.
template <class AAt, class BAt>
__device__ __forceinline__ void mma_step(TF32, float (&acc)[4], int k, AAt a, BAt b) {
    const int lane = threadIdx.x % 32, group = lane / 4, member = lane % 4;
    mma_tf32(acc, __float_as_uint(a(group, k + member)), __float_as_uint(a(group + 8, k + member)),
             __float_as_uint(a(group, k + member + 4)), __float_as_uint(a(group + 8, k + member + 4)),
             __float_as_uint(b(group, k + member)), __float_as_uint(b(group, k + member + 4)));
}

template <class AAt, class BAt>
__device__ __forceinline__ void mma_step(BF16, float (&acc)[4], int k0, AAt a, BAt b) {
    const int lane = threadIdx.x % 32, group = lane / 4, k = k0 + 2 * (lane % 4);
    mma_bf16(acc, pack_bf16(a(group, k), a(group, k + 1)), pack_bf16(a(group + 8, k), a(group + 8, k + 1)),
             pack_bf16(a(group, k + 8), a(group, k + 9)), pack_bf16(a(group + 8, k + 8), a(group + 8, k + 9)),
             pack_bf16(b(group, k), b(group, k + 1)), pack_bf16(b(group, k + 8), b(group, k + 9)));
}

template <class P> struct KStep { static constexpr int value = 8; };
template <> struct KStep<BF16> { static constexpr int value = 16; };

// Copies rows [row0, row0 + rows_here) and columns [col0, col0 + cols_here) of a row-major
// matrix into shared memory, rounded to the operand precision and zero-filled past its end.
template <class P, int ROWS, int COLS, int STRIDE>
__device__ __forceinline__ void stage(P p, float (*dst)[STRIDE], const float* __restrict__ src, long long rows,
                                      long long cols, long long row0, long long col0) {
    for (int e = threadIdx.x; e < ROWS * COLS; e += PAIR_THREADS) {
        const int r = e / COLS, c = e % COLS;
        const long long gr = row0 + r, gc = col0 + c;
        dst[r][c] = (gr < rows && gc < cols) ? round_operand(p, src[gr * cols + gc]) : 0.0f;
    }
}

// The 64 x 64 tile of dot products between staged outer and inner chunks. With tensor cores
// each warp owns 16 rows x 32 columns (four m16n8 tiles); in f32 each thread owns 4 x 4.
template <class P>
struct SimilarityTile {
    float acc[4][4];
    __device__ void clear() {
        for (int t = 0; t < 4; ++t)
            for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    }
    __device__ void accumulate(const float (*xs)[CHUNK_STRIDE], const float (*ys)[CHUNK_STRIDE]) {
        const int warp = threadIdx.x / 32, row0 = (warp / 2) * 16, col0 = (warp % 2) * 32;
        for (int k0 = 0; k0 < CHUNK; k0 += KStep<P>::value)
            for (int t = 0; t < 4; ++t)
                mma_step(P{}, acc[t], k0, [&](int r, int k) { return xs[row0 + r][k]; },
                         [&](int n, int k) { return ys[col0 + 8 * t + n][k]; });
    }
    __device__ void store(float (*ss)[TILE_STRIDE]) const {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int row = (warp / 2) * 16 + lane / 4, col = (warp % 2) * 32 + 2 * (lane % 4);
        for (int t = 0; t < 4; ++t)
            for (int i = 0; i < 4; ++i) ss[row + (i / 2) * 8][col + 8 * t + i % 2] = acc[t][i];
    }
};

template <>
struct SimilarityTile<F32> {
    float acc[4][4];
    __device__ void clear() {
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    }
    __device__ void accumulate(const float (*xs)[CHUNK_STRIDE], const float (*ys)[CHUNK_STRIDE]) {
        const int row0 = (threadIdx.x / 16) * 4, col0 = threadIdx.x % 16;
        for (int k = 0; k < CHUNK; ++k)
            for (int r = 0; r < 4; ++r)
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(xs[row0 + r][k], ys[col0 + 16 * c][k], acc[r][c]);
    }
    __device__ void store(float (*ss)[TILE_STRIDE]) const {
        const int row0 = (threadIdx.x / 16) * 4, col0 = threadIdx.x % 16;
        for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) ss[row0 + r][col0 + 16 * c] = acc[r][c];
    }
};

// Fills `ss` with the dot products of outer rows [o0, o0 + 64) and inner rows [n0, n0 + 64).
template <class P>
__device__ __forceinline__ void similarity_tile(P p, float (*xs)[CHUNK_STRIDE], float (*ys)[CHUNK_STRIDE],
                                                float (*ss)[TILE_STRIDE], const float* __restrict__ outer,
                                                const float* __restrict__ inner, long long outer_count,
                                                long long inner_count, long long dim, long long o0, long long n0) {
    SimilarityTile<P> tile;
    tile.clear();
    for (long long k0 = 0; k0 < dim; k0 += CHUNK) {
        stage<P, TILE, CHUNK, CHUNK_STRIDE>(p, xs, outer, outer_count, dim, o0, k0);
        stage<P, TILE, CHUNK, CHUNK_STRIDE>(p, ys, inner, inner_count, dim, n0, k0);
        __syncthreads();
        tile.accumulate(xs, ys);
        __syncthreads();
    }
    tile.store(ss);
    __syncthreads();
}

// `out[o] = reduce_n w(o, n, outer_o · inner_n)`: one block per 64 outer rows, four threads
// per row, each keeping its own running reduction over every inner tile.
template <class R, class P, class W>
__device__ __forceinline__ void pairwise_reduce(P p, const float* __restrict__ outer, const float* __restrict__ inner,
                                                long long outer_count, long long inner_count, long long dim,
                                                float* __restrict__ out, W w) {
    __shared__ float xs[TILE][CHUNK_STRIDE];
    __shared__ float ys[TILE][CHUNK_STRIDE];
    __shared__ float ss[TILE][TILE_STRIDE];
    const long long o0 = blockIdx.x * (long long)TILE;
    const int row = threadIdx.x / 4, quarter = threadIdx.x % 4;
    const long long o = o0 + row;
    R r;
    for (long long n0 = 0; n0 < inner_count; n0 += TILE) {
        similarity_tile(p, xs, ys, ss, outer, inner, outer_count, inner_count, dim, o0, n0);
        if (o < outer_count) {
            for (int c = quarter; c < TILE; c += 4) {
                const long long n = n0 + c;
                if (n < inner_count) r.add(w(o, n, ss[row][c]), n);
            }
        }
        __syncthreads();
    }
    r.combine(1);
    r.combine(2);
    if (quarter == 0 && o < outer_count) out[o] = r.result();
}

// `acc += W V` for a 64 x VCOLS block of the output: W is columns [k0, k0 + VROWS) of the
// tile of weights in `ss`, V the staged rows of `v`. With tensor cores each warp owns 16 rows
// x 64 columns (eight m16n8 tiles); in f32 each thread owns 8 rows x 4 columns.
template <class P>
struct ProductTile {
    float acc[8][4];
    __device__ void clear() {
        for (int t = 0; t < 8; ++t)
            for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    }
    __device__ void accumulate(const float (*ss)[TILE_STRIDE], int k0, const float (*vs)[VCOLS_STRIDE]) {
        const int warp = threadIdx.x / 32, row0 = (warp / 2) * 16, col0 = (warp % 2) * 64;
        for (int k = 0; k < VROWS; k += KStep<P>::value)
            for (int t = 0; t < 8; ++t)
                mma_step(P{}, acc[t], k, [&](int r, int kk) { return ss[row0 + r][k0 + kk]; },
                         [&](int n, int kk) { return vs[kk][col0 + 8 * t + n]; });
    }
    __device__ void store(float* __restrict__ out, long long o0, long long e0, long long outer_count,
                          long long width) const {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int row = (warp / 2) * 16 + lane / 4, col = (warp % 2) * 64 + 2 * (lane % 4);
        for (int t = 0; t < 8; ++t)
            for (int i = 0; i < 4; ++i) {
                const long long o = o0 + row + (i / 2) * 8, e = e0 + col + 8 * t + i % 2;
                if (o < outer_count && e < width) out[o * width + e] = acc[t][i];
            }
    }
};

template <>
struct ProductTile<F32> {
    float acc[8][4];
    __device__ void clear() {
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    }
    __device__ void accumulate(const float (*ss)[TILE_STRIDE], int k0, const float (*vs)[VCOLS_STRIDE]) {
        const int row0 = (threadIdx.x / 32) * 8, col0 = threadIdx.x % 32;
        for (int k = 0; k < VROWS; ++k)
            for (int r = 0; r < 8; ++r)
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(ss[row0 + r][k0 + k], vs[k][col0 + 32 * c], acc[r][c]);
    }
    __device__ void store(float* __restrict__ out, long long o0, long long e0, long long outer_count,
                          long long width) const {
        const int row0 = (threadIdx.x / 32) * 8, col0 = threadIdx.x % 32;
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 4; ++c) {
                const long long o = o0 + row0 + r, e = e0 + col0 + 32 * c;
                if (o < outer_count && e < width) out[o * width + e] = acc[r][c];
            }
    }
};

// `out[o, e] = sum_n w(o, n, outer_o · inner_n) v[n, e]`: one block per 64 outer rows and
// VCOLS columns of `v`. The weights overwrite their dot products in shared memory, and the
// staging buffer of the operands is reused for the rows of `v`.
template <class P, class W>
__device__ __forceinline__ void pairwise_matmul(P p, const float* __restrict__ outer, const float* __restrict__ inner,
                                                const float* __restrict__ v, long long outer_count,
                                                long long inner_count, long long dim, long long width,
                                                float* __restrict__ out, W w) {
    __shared__ float staging[2 * TILE * CHUNK_STRIDE];
    __shared__ float ss[TILE][TILE_STRIDE];
    static_assert(VROWS * VCOLS_STRIDE <= 2 * TILE * CHUNK_STRIDE, "the rows of v fit the staging buffer");
    float (*xs)[CHUNK_STRIDE] = reinterpret_cast<float (*)[CHUNK_STRIDE]>(staging);
    float (*ys)[CHUNK_STRIDE] = xs + TILE;
    float (*vs)[VCOLS_STRIDE] = reinterpret_cast<float (*)[VCOLS_STRIDE]>(staging);
    const long long o0 = blockIdx.x * (long long)TILE, e0 = blockIdx.y * (long long)VCOLS;
    ProductTile<P> product;
    product.clear();
    for (long long n0 = 0; n0 < inner_count; n0 += TILE) {
        similarity_tile(p, xs, ys, ss, outer, inner, outer_count, inner_count, dim, o0, n0);
        for (int e = threadIdx.x; e < TILE * TILE; e += PAIR_THREADS) {
            const int r = e / TILE, c = e % TILE;
            const long long o = o0 + r, n = n0 + c;
            ss[r][c] = (o < outer_count && n < inner_count) ? round_operand(p, w(o, n, ss[r][c])) : 0.0f;
        }
        __syncthreads();
        for (int k0 = 0; k0 < TILE; k0 += VROWS) {
            stage<P, VROWS, VCOLS, VCOLS_STRIDE>(p, vs, v, inner_count, width, n0 + k0, e0);
            __syncthreads();
            product.accumulate(ss, k0, vs);
            __syncthreads();
        }
    }
    product.store(out, o0, e0, outer_count, width);
}

}  // namespace sslc
