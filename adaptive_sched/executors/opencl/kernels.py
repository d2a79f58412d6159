"""OpenCL C sources of the GPU executor's kernels, specialised at build time by macros.

Each program is built once per (source, macro set, device) by
:class:`~adaptive_sched.executors.opencl.executor.OpenCLExecutor`. Sizes that vary from run to
run (rows, columns, keys) are kernel arguments; the macros fix what must be known at
compile time for registers to be allocated: the block shape, the vector width, the head
dimension and the storage type of each operand.

Storage codes (macros ``X_STORE``, ``W_STORE``, ``Q_STORE``, ``K_STORE``, ``V_STORE``):
``0`` float, ``1`` half (read with ``vload_half``, a core OpenCL function that needs no
``cl_khr_fp16``), ``2`` signed char (int8, already quantised). Arithmetic is always float32
or exact integer arithmetic, so every variant accumulates like the numpy reference.

Why the kernels look like this: on a Mali (Valhall) GPU and on PoCL alike, local memory is
ordinary cached memory, so the GEMM keeps a block of ``R`` rows by ``VW`` columns of the
output in registers (one ``floatVW`` accumulator per row) and lets the cache serve the
reuse, instead of staging tiles through local memory.
"""

from __future__ import annotations

#: storage codes of the ``*_STORE`` macros
FLOAT, HALF, INT8 = 0, 1, 2

#: shared by every program: token pasting for vector types and the storage loaders
PRELUDE = r"""
// Quantisation and epilogues must round exactly like the numpy reference: no silent fma.
#pragma OPENCL FP_CONTRACT OFF
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define INT8_MAX_F 127.0f

// Vector helpers of width VW; VW == 1 (odd head dimensions) falls back to scalars.
#if VW == 1
#define FV float
#define IV int
#define VLOAD(p, i) ((p)[i])
#define VSTORE(x, p) (*(p) = (x))
#define TO_FV(x) ((float)(x))
#define TO_IV(x) ((int)(x))
#else
#define FV CAT(float, VW)
#define IV CAT(int, VW)
#define VLOAD(p, i) CAT(vload, VW)(0, (p) + (i))
#define VSTORE(x, p) CAT(vstore, VW)((x), 0, (p))
#define TO_FV(x) CAT(convert_float, VW)(x)
#define TO_IV(x) CAT(convert_int, VW)(x)
#endif

// LOADV_<code>(p, i): VW elements of a buffer of storage <code> from element i, as FV.
#define LOADV_0(p, i) VLOAD(p, i)
#if VW == 1
#define LOADV_1(p, i) vload_half((i), (p))
#else
#define LOADV_1(p, i) CAT(vload_half, VW)(0, (p) + (i))
#endif
#define LOADV_2(p, i) TO_FV(VLOAD(p, i))
// LOAD1_<code>(p, i): one element as float.
#define LOAD1_0(p, i) ((p)[i])
#define LOAD1_1(p, i) vload_half((i), (p))
#define LOAD1_2(p, i) ((float)(p)[i])
#define STORE_T_0 float
#define STORE_T_1 half
#define STORE_T_2 char
#define STORE_T(code) CAT(STORE_T_, code)
#define LOADV(code, p, i) CAT(LOADV_, code)(p, i)
#define LOAD1(code, p, i) CAT(LOAD1_, code)(p, i)
"""

#: ``X[M, K] @ W[K, N] (+ bias)``: register-blocked GEMM; with a small ``R`` it is the decode GEMV.
#:
#: Macros: ``R`` rows per work-item, ``VW`` columns per work-item (2, 4, 8 or 16), ``KU`` unroll
#: of the reduction loop, ``X_STORE``/``W_STORE`` storage codes, ``QUANT`` 1 for int8 operands.
#: Work-item ``(cb, rb)`` computes rows ``rb*R ..`` and columns ``cb*VW ..``; rows past ``M`` read
#: row ``M-1`` and are not stored, the last column block loads and stores lane by lane.
#:
#: INT8: products of int8 values are exact in float32, and so is any sum of up to 1024 of
#: them (``1024 * 127 * 127 < 2**24``); the kernel accumulates chunks of ``KCHUNK <= 1024``
#: reduction steps with float FMAs and adds each chunk to an int32 accumulator. The result
#: equals an int32 accumulation bit for bit, at the speed of the float pipeline.
GEMM = r"""
#define XT STORE_T(X_STORE)
#define WT STORE_T(W_STORE)

inline FV load_w_edge(__global const WT* w, int i, int valid) {
    float t[VW];
    for (int l = 0; l < VW; ++l) t[l] = l < valid ? LOAD1(W_STORE, w, i + l) : 0.0f;
    return VLOAD(t, 0);
}

// acc[r][v] += X[row r, k] * W[k, c0 + v*VW .. + VW) for k in [k_begin, k_end)
#define ACCUMULATE(acc, k_begin, k_end)                                                  \
    {                                                                                    \
        int k = (k_begin);                                                               \
        if (full) {                                                                      \
            for (; k + KU <= (k_end); k += KU) {                                         \
                _Pragma("unroll") for (int u = 0; u < KU; ++u) {                         \
                    FV wv[CB];                                                           \
                    _Pragma("unroll") for (int c = 0; c < CB; ++c)                       \
                        wv[c] = LOADV(W_STORE, w, (k + u) * N + c0 + c * VW);            \
                    _Pragma("unroll") for (int r = 0; r < R; ++r) {                      \
                        const FV xv = (FV)(LOAD1(X_STORE, x, xo[r] + k + u));            \
                        _Pragma("unroll") for (int c = 0; c < CB; ++c)                   \
                            acc[r][c] = fma(xv, wv[c], acc[r][c]);                       \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        for (; k < (k_end); ++k) {                                                       \
            FV wv[CB];                                                                   \
            for (int c = 0; c < CB; ++c)                                                 \
                wv[c] = full ? LOADV(W_STORE, w, k * N + c0 + c * VW)                    \
                             : load_w_edge(w, k * N + c0 + c * VW, N - c0 - c * VW);     \
            for (int r = 0; r < R; ++r) {                                                \
                const FV xv = (FV)(LOAD1(X_STORE, x, xo[r] + k));                        \
                for (int c = 0; c < CB; ++c) acc[r][c] = fma(xv, wv[c], acc[r][c]);      \
            }                                                                            \
        }                                                                                \
    }

__kernel void gemm(__global const XT* restrict x, __global const WT* restrict w,
                   __global const float* restrict bias, __global const float* restrict x_scale,
                   __global const float* restrict w_scale, __global float* restrict out,
                   const int M, const int K, const int N) {
    const int c0 = get_global_id(0) * (VW * CB);
    const int r0 = get_global_id(1) * R;
    if (c0 >= N || r0 >= M) return;
    const int full = c0 + VW * CB <= N;
    int xo[R];
    for (int r = 0; r < R; ++r) xo[r] = min(r0 + r, M - 1) * K;

#if QUANT
    IV total[R][CB];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < CB; ++c) total[r][c] = 0;
    for (int k0 = 0; k0 < K; k0 += KCHUNK) {
        FV acc[R][CB];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < CB; ++c) acc[r][c] = 0.0f;
        ACCUMULATE(acc, k0, min(K, k0 + KCHUNK));
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < CB; ++c) total[r][c] += TO_IV(acc[r][c]);
    }
    const float xs = x_scale[0];
#else
    FV acc[R][CB];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < CB; ++c) acc[r][c] = 0.0f;
    ACCUMULATE(acc, 0, K);
#endif

    for (int c = 0; c < CB; ++c) {
        const int cc = c0 + c * VW;
        if (cc >= N) break;
        float b[VW], s[VW];
        for (int l = 0; l < VW; ++l) {
            const int col = min(cc + l, N - 1);
            b[l] = bias[col];
#if QUANT
            s[l] = xs * w_scale[col];
#endif
        }
        for (int r = 0; r < R; ++r) {
            if (r0 + r >= M) break;
#if QUANT
            const FV y = TO_FV(total[r][c]) * VLOAD(s, 0) + VLOAD(b, 0);
#else
            const FV y = acc[r][c] + VLOAD(b, 0);
#endif
            __global float* o = out + (r0 + r) * N + cc;
            if (cc + VW <= N) {
                VSTORE(y, o);
            } else {
                float t[VW];
                VSTORE(y, t);
                for (int l = 0; l < N - cc; ++l) o[l] = t[l];
            }
        }
    }
}
"""

#: Symmetric int8 quantisation on the device, exactly as :func:`adaptive_sched.stages.quantize_symmetric`.
#:
#: Per tensor: ``absmax_partial`` writes one max|x| per chunk, ``quantize`` folds the partial
#: maxima into the scale (every work-item, so no extra launch; work-item 0 also stores it in
#: ``scales[slot]`` for the consumer kernel) and writes ``clamp(rint(x / scale), -127, 127)``. Per output column of
#: a weight matrix: ``column_scale`` then ``quantize_columns``. ``to_half`` converts weights to
#: half storage with round-to-nearest-even, as numpy's ``astype(float16)`` does. ``VW`` is 16.
QUANTIZE = r"""
inline float scale_of(float amax) { return amax > 0.0f ? amax / INT8_MAX_F : 1.0f; }

inline float hmax16(float16 v) {
    float8 a = fmax(v.lo, v.hi);
    float4 b = fmax(a.lo, a.hi);
    float2 c = fmax(b.lo, b.hi);
    return fmax(c.x, c.y);
}

__kernel void absmax_partial(__global const float* restrict x, const int n, const int chunk,
                             __global float* restrict partial) {
    const int g = get_global_id(0);
    const int i1 = min(n, (g + 1) * chunk);
    int i = g * chunk;
    float16 m = 0.0f;
    for (; i + 16 <= i1; i += 16) m = fmax(m, fabs(vload16(0, x + i)));
    float s = hmax16(m);
    for (; i < i1; ++i) s = fmax(s, fabs(x[i]));
    partial[g] = s;
}

// convert_char16_rtz: the values are already integral; PoCL's default-rounding conversion is
// about twice as slow.
inline char16 to_int8_16(float16 v, float16 s) {
    return convert_char16_rtz(clamp(rint(v / s), -INT8_MAX_F, INT8_MAX_F));
}

inline char to_int8(float v, float s) { return (char)clamp(rint(v / s), -INT8_MAX_F, INT8_MAX_F); }

// QUANTIZE_BODY(store16, store1): the per-tensor quantisation loop, storing through the two
// statements given (int8 storage for tensors read many times, float for the GEMM's activations).
#define QUANTIZE_BODY(STORE16, STORE1)                                              \
    float amax = 0.0f;                                                              \
    for (int p = 0; p < parts; ++p) amax = fmax(amax, partial[p]);                  \
    const float s = scale_of(amax);                                                 \
    const int g = get_global_id(0);                                                 \
    if (g == 0) scales[slot] = s;                                                   \
    const int i1 = min(n, (g + 1) * chunk);                                         \
    int i = g * chunk;                                                              \
    for (; i + 16 <= i1; i += 16) { STORE16; }                                      \
    for (; i < i1; ++i) { STORE1; }

__kernel void quantize(__global const float* restrict x, const int n, const int chunk,
                       __global const float* restrict partial, const int parts,
                       __global char* restrict q, __global float* restrict scales, const int slot) {
    QUANTIZE_BODY(vstore16(to_int8_16(vload16(0, x + i), (float16)s), 0, q + i), q[i] = to_int8(x[i], s))
}

// The same integers as floats: a GEMM broadcasts one activation per row and step, and a float
// load broadcasts in one instruction where a char needs a load, a convert and a broadcast.
__kernel void quantize_to_float(__global const float* restrict x, const int n, const int chunk,
                                __global const float* restrict partial, const int parts,
                                __global float* restrict q, __global float* restrict scales, const int slot) {
    QUANTIZE_BODY(vstore16(convert_float16(to_int8_16(vload16(0, x + i), (float16)s)), 0, q + i),
                  q[i] = (float)to_int8(x[i], s))
}

// One work-item per block of 16 columns: max|w| down each column, then the column's scale.
__kernel void column_scale(__global const float* restrict w, const int K, const int N,
                           __global float* restrict scale) {
    const int c0 = get_global_id(0) * 16;
    if (c0 >= N) return;
    if (c0 + 16 <= N) {
        float16 m = 0.0f;
        for (int k = 0; k < K; ++k) m = fmax(m, fabs(vload16(0, w + k * N + c0)));
        vstore16(select((float16)1.0f, m / INT8_MAX_F, m > 0.0f), 0, scale + c0);
    } else {
        for (int c = c0; c < N; ++c) {
            float m = 0.0f;
            for (int k = 0; k < K; ++k) m = fmax(m, fabs(w[k * N + c]));
            scale[c] = scale_of(m);
        }
    }
}

// Work-item (column block, row chunk) quantises ``rows`` rows of 16 columns.
__kernel void quantize_columns(__global const float* restrict w, const int K, const int N,
                               const int rows, __global const float* restrict scale,
                               __global char* restrict q) {
    const int c0 = get_global_id(0) * 16;
    if (c0 >= N) return;
    const int k0 = get_global_id(1) * rows;
    const int k1 = min(K, k0 + rows);
    if (c0 + 16 <= N) {
        const float16 s = vload16(0, scale + c0);
        for (int k = k0; k < k1; ++k) vstore16(to_int8_16(vload16(0, w + k * N + c0), s), 0, q + k * N + c0);
    } else {
        for (int k = k0; k < k1; ++k)
            for (int c = c0; c < N; ++c) q[k * N + c] = to_int8(w[k * N + c], scale[c]);
    }
}

__kernel void to_half(__global const float* restrict x, const int n, const int chunk,
                      __global half* restrict y) {
    const int g = get_global_id(0);
    const int i1 = min(n, (g + 1) * chunk);
    int i = g * chunk;
    for (; i + 16 <= i1; i += 16) vstore_half16_rte(vload16(0, x + i), 0, y + i);
    for (; i < i1; ++i) vstore_half_rte(x[i], i, y);
}
"""

#: Causal multi-head attention over the KV cache, ``softmax(Q K^T / sqrt(HD) + mask) V``.
#:
#: Layout: ``q, o [BH, n, HD]`` and ``k, v [BH, keys, HD]``; query ``i`` sits at position
#: ``keys - n + i`` and sees keys ``0 ..`` that position. Work-item ``(qb, bh, split)`` owns
#: ``RQ`` consecutive queries of one (batch, head) and the keys ``[split * chunk, ..)`` of
#: one split, so every key and value row it loads serves ``RQ`` queries from registers.
#: Macros: ``HD`` head dimension, ``VW`` vector width dividing ``HD``, ``RQ`` queries per
#: work-item, ``TK`` keys per tile, ``Q_STORE``/``K_STORE``/``V_STORE`` storage codes, ``QUANT`` 1 for int8.
#:
#: Splitting the keys (flash-decoding) gives decode, which has only ``BH`` queries, enough
#: work-items to fill a GPU; with one split the kernels write the output directly.
#:
#: Float (``attention``, then ``attention_combine`` when split): one pass with an online
#: softmax (running max ``m``, sum ``l``; the accumulator is rescaled only when the max
#: grows), the same function as the reference's max-subtracted softmax up to rounding. Each
#: split leaves ``(m, l, acc)``; the combine weighs them by ``exp(m_s - max m)``.
#: INT8: the reference quantises the *normalised* probabilities (``rint(p * 127)``), which
#: needs the final max and sum before any value is accumulated, so ``attention_stats`` finds
#: ``(m, l)`` per split, ``attention_int8`` merges them, recomputes each score, quantises
#: ``p = exp(s - m) / l`` and accumulates ``pq * vq`` in int32, and ``attention_sum_int8``
#: adds the splits' integer sums (exact, so a split changes nothing).
ATTENTION = r"""
#define NV (HD / VW)
#define QT STORE_T(Q_STORE)
#define KT STORE_T(K_STORE)
#define VT STORE_T(V_STORE)

// horizontal sum as a tree of vector adds (a loop over lanes serialises VW scalar adds)
inline float hsum(FV v) {
#if VW == 16
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
#elif VW == 8
    const float4 b = v.lo + v.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
#elif VW == 4
    const float2 c = v.lo + v.hi;
    return c.x + c.y;
#elif VW == 2
    return v.x + v.y;
#else
    return v;
#endif
}

// Work-item geometry shared by the per-split kernels: queries i0 .. i0+rows-1 of head bh see
// keys up to offset + i; this split covers keys [j_begin, j_end).
#define GEOMETRY                                                                    \
    const int i0 = get_global_id(0) * RQ;                                           \
    const int bh = get_global_id(1);                                                \
    const int split = get_global_id(2);                                             \
    if (i0 >= n) return;                                                            \
    const int offset = keys - n;                                                    \
    const int rows = min(RQ, n - i0);                                               \
    const int j_begin = split * chunk;                                              \
    const int j_end = min(offset + i0 + rows, j_begin + chunk);                     \
    const int row0 = bh * n + i0; /* index of the first query among all BH * n */   \
    q += ((long)bh * n + i0) * HD;                                                  \
    k += (long)bh * keys * HD;                                                      \
    FV qv[RQ][NV];                                                                  \
    for (int r = 0; r < RQ; ++r)                                                    \
        for (int c = 0; c < NV; ++c) qv[r][c] = LOADV(Q_STORE, q, min(r, rows - 1) * HD + c * VW);

// s[r][t]: score of query r against key j0 + t; -INFINITY where the causal mask hides the key
// or the key lies at or past `stop`. A tile of TK independent scores per step lets the
// compiler overlap the dot products, and the softmax rescales once per tile, not per key.
#define TILE_SCORES(j0, stop)                                                        \
    float s[RQ][TK];                                                                 \
    for (int t = 0; t < TK; ++t) {                                                   \
        const int j = (j0) + t;                                                      \
        if (j < (stop)) {                                                            \
            FV kv[NV];                                                               \
            for (int c = 0; c < NV; ++c) kv[c] = LOADV(K_STORE, k, j * HD + c * VW); \
            for (int r = 0; r < RQ; ++r) {                                           \
                FV a = qv[r][0] * kv[0];                                             \
                for (int c = 1; c < NV; ++c) a = fma(qv[r][c], kv[c], a);            \
                s[r][t] = j > offset + i0 + r ? -INFINITY : SCORE(hsum(a));          \
            }                                                                        \
        } else {                                                                     \
            for (int r = 0; r < RQ; ++r) s[r][t] = -INFINITY;                        \
        }                                                                            \
    }

// fold a tile into the running max m[r] and sum l[r]; p[r][t] = exp(s - m) (0 where hidden).
// RESCALE(r, corr) multiplies whatever else was accumulated against the old max.
#define ONLINE_SOFTMAX(RESCALE)                                                      \
    float p[RQ][TK];                                                                 \
    for (int r = 0; r < RQ; ++r) {                                                   \
        float tmax = s[r][0];                                                        \
        for (int t = 1; t < TK; ++t) tmax = fmax(tmax, s[r][t]);                     \
        if (tmax > m[r]) {                                                           \
            const float corr = exp(m[r] - tmax);                                     \
            l[r] *= corr;                                                            \
            RESCALE(r, corr)                                                         \
            m[r] = tmax;                                                             \
        }                                                                            \
        for (int t = 0; t < TK; ++t) {                                               \
            p[r][t] = s[r][t] == -INFINITY ? 0.0f : exp(s[r][t] - m[r]);             \
            l[r] += p[r][t];                                                         \
        }                                                                            \
    }
#define NO_RESCALE(r, corr)
#define RESCALE_ACC(r, corr) for (int c = 0; c < NV; ++c) acc[r][c] *= (corr);

#if QUANT
// The reference's order of operations: (int dot * (qs * ks)) * (1 / sqrt(HD)).
#define SCORE(dot) (((dot) * (qkv_scale[0] * qkv_scale[1])) * scale)

__kernel void attention_stats(__global const QT* restrict q, __global const KT* restrict k,
                              const int n, const int keys, const float scale, const int chunk,
                              __global const float* restrict qkv_scale, __global float* restrict stats) {
    GEOMETRY
    float m[RQ], l[RQ];
    for (int r = 0; r < RQ; ++r) { m[r] = -INFINITY; l[r] = 0.0f; }
    for (int j0 = j_begin; j0 < j_end; j0 += TK) {
        TILE_SCORES(j0, j_end)
        ONLINE_SOFTMAX(NO_RESCALE)
    }
    __global float* out = stats + 2 * ((long)split * get_global_size(1) * n + row0);
    for (int r = 0; r < rows; ++r) { out[2 * r] = m[r]; out[2 * r + 1] = l[r]; }
}

// Products pq * vq <= 127 * 127, so float sums of up to 1024 keys are exact integers; each
// chunk of 1024 keys is added to the int32 accumulator (as in the GEMM).
__kernel void attention_int8(__global const QT* restrict q, __global const KT* restrict k,
                             __global const VT* restrict v, const int n, const int keys,
                             const float scale, const int chunk, __global const float* restrict qkv_scale,
                             __global const float* restrict stats, __global float* restrict o,
                             __global int* restrict partial) {
    GEOMETRY
    v += (long)bh * keys * HD;
    const int splits = get_global_size(2);
    const long per_split = (long)get_global_size(1) * n;
    // merge the splits' (m, l) into the softmax max and denominator of every query
    float m[RQ], l[RQ];
    for (int r = 0; r < RQ; ++r) {
        const int row = row0 + min(r, rows - 1);
        float mm = -INFINITY;
        for (int t = 0; t < splits; ++t) mm = fmax(mm, stats[2 * (t * per_split + row)]);
        float ll = 0.0f;
        for (int t = 0; t < splits; ++t) {
            const float mt = stats[2 * (t * per_split + row)];
            if (mt > -INFINITY) ll += stats[2 * (t * per_split + row) + 1] * exp(mt - mm);
        }
        m[r] = mm;
        l[r] = ll;
    }
    IV acc[RQ][NV];
    for (int r = 0; r < RQ; ++r)
        for (int c = 0; c < NV; ++c) acc[r][c] = 0;
    for (int jc = j_begin; jc < j_end; jc += 1024) {
        const int stop = min(j_end, jc + 1024);
        FV exact[RQ][NV];
        for (int r = 0; r < RQ; ++r)
            for (int c = 0; c < NV; ++c) exact[r][c] = 0.0f;
        for (int j0 = jc; j0 < stop; j0 += TK) {
            TILE_SCORES(j0, stop)
            for (int t = 0; t < TK; ++t) {
                const int j = j0 + t;
                if (j >= stop) break;
                FV vv[NV];
                for (int c = 0; c < NV; ++c) vv[c] = LOADV(V_STORE, v, j * HD + c * VW);
                for (int r = 0; r < RQ; ++r) {
                    if (s[r][t] == -INFINITY) continue;
                    const float pq = rint((exp(s[r][t] - m[r]) / l[r]) * INT8_MAX_F);
                    for (int c = 0; c < NV; ++c) exact[r][c] = fma((FV)pq, vv[c], exact[r][c]);
                }
            }
        }
        for (int r = 0; r < RQ; ++r)
            for (int c = 0; c < NV; ++c) acc[r][c] += TO_IV(exact[r][c]);
    }
    if (splits == 1) {
        const float out_scale = qkv_scale[2] / INT8_MAX_F;
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < NV; ++c) VSTORE(TO_FV(acc[r][c]) * out_scale, o + (long)(row0 + r) * HD + c * VW);
    } else {
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < NV; ++c)
                VSTORE(acc[r][c], partial + ((long)split * per_split + row0 + r) * HD + c * VW);
    }
}

__kernel void attention_sum_int8(__global const int* restrict partial, const int rows, const int splits,
                                 __global const float* restrict qkv_scale, __global float* restrict o) {
    const int row = get_global_id(0);
    if (row >= rows) return;
    const float out_scale = qkv_scale[2] / INT8_MAX_F;
    for (int c = 0; c < HD; ++c) {
        int total = 0;
        for (int t = 0; t < splits; ++t) total += partial[((long)t * rows + row) * HD + c];
        o[(long)row * HD + c] = (float)total * out_scale;
    }
}

#else
#define SCORE(dot) ((dot) * scale)

__kernel void attention(__global const QT* restrict q, __global const KT* restrict k,
                        __global const VT* restrict v, const int n, const int keys, const float scale,
                        const int chunk, __global float* restrict o, __global float* restrict partial) {
    GEOMETRY
    v += (long)bh * keys * HD;
    float m[RQ], l[RQ];
    FV acc[RQ][NV];
    for (int r = 0; r < RQ; ++r) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int c = 0; c < NV; ++c) acc[r][c] = 0.0f;
    }
    for (int j0 = j_begin; j0 < j_end; j0 += TK) {
        TILE_SCORES(j0, j_end)
        ONLINE_SOFTMAX(RESCALE_ACC)
        for (int t = 0; t < TK; ++t) {
            const int j = j0 + t;
            if (j >= j_end) break;
            FV vv[NV];
            for (int c = 0; c < NV; ++c) vv[c] = LOADV(V_STORE, v, j * HD + c * VW);
            for (int r = 0; r < RQ; ++r)
                for (int c = 0; c < NV; ++c) acc[r][c] = fma((FV)p[r][t], vv[c], acc[r][c]);
        }
    }
    if (get_global_size(2) == 1) {
        for (int r = 0; r < rows; ++r) {
            const float inv = 1.0f / l[r];
            for (int c = 0; c < NV; ++c) VSTORE(acc[r][c] * inv, o + (long)(row0 + r) * HD + c * VW);
        }
    } else {
        // partial row layout: m, l, then HD accumulator values
        for (int r = 0; r < rows; ++r) {
            __global float* pr = partial + ((long)split * get_global_size(1) * n + row0 + r) * (HD + 2);
            pr[0] = m[r];
            pr[1] = l[r];
            for (int c = 0; c < NV; ++c) VSTORE(acc[r][c], pr + 2 + c * VW);
        }
    }
}

__kernel void attention_combine(__global const float* restrict partial, const int rows, const int splits,
                                __global float* restrict o) {
    const int row = get_global_id(0);
    if (row >= rows) return;
    float mm = -INFINITY;
    for (int t = 0; t < splits; ++t) mm = fmax(mm, partial[((long)t * rows + row) * (HD + 2)]);
    float l = 0.0f;
    for (int t = 0; t < splits; ++t) {
        const float mt = partial[((long)t * rows + row) * (HD + 2)];
        if (mt > -INFINITY) l += partial[((long)t * rows + row) * (HD + 2) + 1] * exp(mt - mm);
    }
    for (int c = 0; c < HD; ++c) {
        float acc = 0.0f;
        for (int t = 0; t < splits; ++t) {
            const __global float* pr = partial + ((long)t * rows + row) * (HD + 2);
            if (pr[0] > -INFINITY) acc += pr[2 + c] * exp(pr[0] - mm);
        }
        o[(long)row * HD + c] = acc / l;
    }
}
#endif
"""

#: the smallest program worth building: proves the device's compiler works (availability probe)
PROBE = r"""
__kernel void probe(__global float* y) { y[get_global_id(0)] = vload_half(0, (__global const half*)y); }
"""
