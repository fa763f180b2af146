/* The untied two-layer ResNet, forward and backward, for chunks of rows with their own weights.
 *
 * Chunk c (of B) holds n inputs x (n, D) and its network's weights A (M, D), c (M), W (L, P, M),
 * b (L, P), V (L, M, P), R (K, M), r (K). For every row (docs/engine.md, "Native ResNet
 * (CPU)"):
 *
 *     z_0 = A x + c,
 *     u_k = W_k z_k + b_k,   a_k = act(u_k),   z_{k+1} = z_k + h V_k a_k,   k = 0..L-1,
 *     f   = R z_L + r,
 *
 * and the backward, from e = dJ/df: dR = sum_rows e z_L^T, dr = sum_rows e, g_L = R^T e, then
 * for k = L-1..0
 *
 *     dV_k = h sum_rows g_{k+1} a_k^T,   gu_k = act'(u_k) (V_k^T g_{k+1})   (act' read from a_k),
 *     dW_k = h sum_rows gu_k z_k^T,      db_k = h sum_rows gu_k,   g_k = g_{k+1} + h W_k^T gu_k,
 *
 * and dA = sum_rows g_0 x^T, dc = sum_rows g_0 (and dJ/dx = A^T g_0 when asked for).
 *
 * A row's arithmetic reads only its own input and its chunk's weights, and a chunk's gradients
 * sum its own rows in row order, so no number depends on the other chunks or on how the chunks
 * are shared among threads: the engine's batch invariance. The backward runs each chunk's
 * forward again into a buffer of one chunk's layers, which stays in cache: nothing but x is kept
 * between the passes.
 *
 * The scalar type T (-DRS_DOUBLE: double, else float) and the widths D, M, P, K (-DRS_D=...)
 * are compile-time constants: resdyn.models.native builds one library per (T, D, M, P, K) on
 * first use. A row is held as vectors of VL lanes (GCC vector extensions, 64 bytes; lanes past a
 * width are zero and stay zero), and RB rows advance together so that their multiply-add chains
 * overlap. tanh is built from an exp written out here, range reduction and polynomial, because
 * libm's exp is scalar.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef RS_D
#define RS_D 2
#endif
#ifndef RS_M
#define RS_M 16
#endif
#ifndef RS_P
#define RS_P 16
#endif
#ifndef RS_K
#define RS_K 2
#endif

#ifdef RS_DOUBLE
typedef double T;
typedef int64_t I; /* the integer of T's width, for masks and exponent bits */
#else
typedef float T;
typedef int32_t I;
#endif
#define VB 64
typedef T vec __attribute__((vector_size(VB)));
typedef I ivec __attribute__((vector_size(VB)));
/* Widths, and the vectors a row of each takes: WV the widest of M, P, K; XV that or D's. */
enum {
    D = RS_D, M = RS_M, P = RS_P, K = RS_K, VL = VB / sizeof(T),
    DV = (D + VL - 1) / VL, MV = (M + VL - 1) / VL, PV = (P + VL - 1) / VL, KV = (K + VL - 1) / VL,
    WV = MV > PV ? (MV > KV ? MV : KV) : (PV > KV ? PV : KV), XV = DV > WV ? DV : WV,
    MP = M > P ? M : P,
    RB = 8 /* rows advanced together */
};
enum { ACT_TANH = 0, ACT_RELU = 1, ACT_SOFT_THRESHOLD = 2, ACT_SHIFTED_RELU = 3 };

/* a where the mask (a vector comparison: all ones or all zeros per lane) is set, else b. */
static inline vec pick(ivec mask, vec a, vec b) {
    return (vec)((mask & (ivec)a) | (~mask & (ivec)b));
}

static inline vec splat(T s) { return (vec){0} + s; }

/* exp by x = n ln2 + r, |r| <= ln2 / 2, exp(x) = 2^n exp(r): Cephes' minimax polynomial (float,
 * about 1 ulp) and a degree-13 Taylor polynomial (double, truncation below 1e-17). The argument
 * is clamped where 2^n would leave the normal range; NaN passes through (comparisons with NaN
 * are false, and NaN times anything is NaN). */
static inline vec exp_v(vec x) {
#ifndef RS_DOUBLE
    x = pick(x > splat(88), splat(88), x);
    x = pick(x < splat(-87), splat(-87), x);
    const vec shifter = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vec n = (x * (T)1.44269504088896341f + shifter) - shifter;
    vec r = n * (T)-0.693359375f + x;
    r = n * (T)2.12194440e-4f + r;
    vec q = splat(1.9875691500e-4f);
    q = q * r + (T)1.3981999507e-3f;
    q = q * r + (T)8.3334519073e-3f;
    q = q * r + (T)4.1665795894e-2f;
    q = q * r + (T)1.6666665459e-1f;
    q = q * r + (T)5.0000001201e-1f;
    q = q * (r * r) + r + (T)1;
    ivec e = (__builtin_convertvector(n, ivec) + 127) << 23;
    return q * (vec)e;
#else
    x = pick(x > splat(708), splat(708), x);
    x = pick(x < splat(-708), splat(-708), x);
    const vec shifter = splat(6755399441055744.0); /* 1.5 * 2^52 */
    vec n = (x * (T)1.4426950408889634074 + shifter) - shifter;
    vec r = n * (T)-6.93147180369123816490e-01 + x;
    r = n * (T)-1.90821492927058770002e-10 + r;
    vec q = splat(1.0 / 6227020800.0);
    static const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                               1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0,
                               1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5};
    for (int i = 0; i < 11; ++i) q = q * r + (T)c[i];
    q = q * (r * r) + r + (T)1;
    ivec e = (__builtin_convertvector(n, ivec) + 1023) << 52;
    return q * (vec)e;
#endif
}

/* a = act(u); tanh u = 1 - 2 / (exp(2u) + 1), the same in real arithmetic, saturating at +-1. */
static inline vec activate(vec u, int act, T tau) {
    const vec zero = {0};
    switch (act) {
    case ACT_TANH:
        return (T)1 - (T)2 / (exp_v(u + u) + (T)1);
    case ACT_RELU:
        return pick(u > zero, u, zero);
    case ACT_SOFT_THRESHOLD:
        return pick(u > splat(tau), u - tau, pick(u < splat(-tau), u + tau, zero));
    default: /* ACT_SHIFTED_RELU */
        return pick(u > splat(tau), u - tau, zero);
    }
}

/* t act'(u), act' written through a = act(u): 1 - a^2 for tanh, [a != 0] for the ReLUs. */
static inline vec derivative(vec t, vec a, int act) {
    if (act == ACT_TANH) return t * ((T)1 - a * a);
    return pick(a != (vec){0}, t, (vec){0});
}

/* n values from src into nv zero-padded vectors. */
static inline void load(vec *dst, const T *src, int nv, int n) {
    memset(dst, 0, sizeof(vec) * nv);
    memcpy(dst, src, sizeof(T) * n);
}

static inline T lane(const vec *v, int i) { return ((const T *)v)[i]; }

/* Columns of a row-major (rows x cols) matrix S, times s, as cols x (rows in vectors): out[i]
 * holds s S[:, i], so that y = S x is sum_i x_i out[i]. */
static void columns(vec *out, const T *S, int rows, int cols, int rv, T s) {
    memset(out, 0, sizeof(vec) * rv * cols);
    for (int j = 0; j < rows; ++j)
        for (int i = 0; i < cols; ++i) ((T *)(out + i * rv))[j] = s * S[j * cols + i];
}

/* Rows of a row-major (rows x cols) matrix S, times s, as rows x (cols in vectors). */
static void rows_of(vec *out, const T *S, int rows, int cols, int cv, T s) {
    for (int j = 0; j < rows; ++j) {
        load(out + j * cv, S + j * cols, cv, cols);
        for (int v = 0; v < cv; ++v) out[j * cv + v] *= s;
    }
}

/* For rows q < rb: y[q] = bias + sum_i x[q][i] cols[i] (y: ov vectors, bias may be NULL), with
 * x rows of width in at stride xs. The sum runs over i in order for every row. */
static inline __attribute__((always_inline)) void affine(int rb, vec y[][WV], const T *x, int xs,
                                                        int in, const vec *cols, const vec *bias,
                                                        int ov) {
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < ov; ++v) y[q][v] = bias ? bias[v] : (vec){0};
    for (int i = 0; i < in; ++i)
        for (int q = 0; q < rb; ++q) {
            const T s = x[q * xs + i];
            for (int v = 0; v < ov; ++v) y[q][v] += s * cols[i * ov + v];
        }
}

/* out = s sum_r x[r] y[r]^T (I x J, row-major), rows summed in order, accumulating in acc
 * (I x jv vectors); with xsum, also xsum = s sum_r x[r] (summed in iv vectors). */
static inline __attribute__((always_inline)) void outer_sum(
    T *out, T *xsum, const T *x, int I, int iv, const T *y, int J, int jv, int n, T s, vec *acc) {
    vec sum[XV];
    memset(acc, 0, sizeof(vec) * I * jv);
    memset(sum, 0, sizeof(vec) * iv);
    for (int r = 0; r < n; ++r) {
        const T *yr = y + (size_t)r * J;
        vec yv[XV];
        load(yv, yr, jv, J);
        for (int i = 0; i < I; ++i) {
            const T xi = x[(size_t)r * I + i];
            for (int v = 0; v < jv; ++v) acc[i * jv + v] += xi * yv[v];
        }
        if (xsum) {
            vec xr[WV];
            load(xr, x + (size_t)r * I, iv, I);
            for (int v = 0; v < iv; ++v) sum[v] += xr[v];
        }
    }
    for (int i = 0; i < I; ++i)
        for (int j = 0; j < J; ++j) out[i * J + j] = s * lane(acc + i * jv, j);
    if (xsum)
        for (int i = 0; i < I; ++i) xsum[i] = s * lane(sum, i);
}

/* One network's weights laid out for the row loops. All L layers are held when they fit in
 * LAYOUT_BYTES, so that a thread lays out each network once per call however many chunks it
 * has; otherwise one layer is held and laid out again for every chunk. */
enum { LAYOUT_BYTES = 4 << 20 };
typedef struct {
    vec *AT, *cb;           /* embedding: columns of A (D x MV), c (MV) */
    vec *WT, *hVT, *bl;     /* per held layer: columns of W (M x PV), of h V (P x MV), b (PV) */
    vec *Vr, *hWr;          /* backward, per held layer: rows of V (M x PV), of h W (P x MV) */
    vec *Rc, *rb, *Rr, *Ar; /* columns of R (M x KV), r (KV); rows of R (K x MV), of A (M x DV) */
    int held, backward;     /* layers held (L or 1); whether the backward's parts are laid out */
    int64_t model;          /* the network whose layers are all held, -1: none */
} Layout;

/* Everything one thread needs for its chunks, allocated once per thread and call. */
typedef struct {
    Layout lay;
    vec *acc;                    /* accumulators of the gradient sums */
    T *z, *zs, *as, *g, *gu, *e; /* rows: state, layers, gradients, activations */
} Scratch;

typedef struct {
    int c0, c1, n, L, act, want_gx;
    T h, tau;
    const int64_t *owner;
    const T *x, *A, *c, *W, *b, *V, *R, *r, *e;
    T *out, *gA, *gc, *gW, *gb, *gV, *gR, *gr, *gx;
    int failed;
} Job;

static void *zalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, VB, bytes ? bytes : VB) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

static int scratch_init(Scratch *s, int n, int L, int backward) {
    memset(s, 0, sizeof *s);
    Layout *y = &s->lay;
    const size_t per_layer = sizeof(vec) * ((size_t)(M * PV + P * MV + PV) * (backward ? 2 : 1));
    y->held = (size_t)L * per_layer <= LAYOUT_BYTES ? L : 1;
    y->backward = backward;
    y->model = -1;
    const size_t held = (size_t)y->held;
    y->AT = zalloc(sizeof(vec) * D * MV);
    y->cb = zalloc(sizeof(vec) * MV);
    y->WT = zalloc(sizeof(vec) * held * M * PV);
    y->hVT = zalloc(sizeof(vec) * held * P * MV);
    y->bl = zalloc(sizeof(vec) * held * PV);
    y->Vr = zalloc(sizeof(vec) * held * M * PV);
    y->hWr = zalloc(sizeof(vec) * held * P * MV);
    y->Rc = zalloc(sizeof(vec) * M * KV);
    y->rb = zalloc(sizeof(vec) * KV);
    y->Rr = zalloc(sizeof(vec) * K * MV);
    y->Ar = zalloc(sizeof(vec) * M * DV);
    const size_t big = (size_t)MP * XV;
    s->acc = zalloc(sizeof(vec) * (big > (size_t)K * MV ? big : (size_t)K * MV));
    const size_t kept = backward ? (size_t)L : 0; /* the forward keeps no layers */
    s->z = zalloc(sizeof(T) * (size_t)n * M);
    s->zs = zalloc(sizeof(T) * kept * n * M);
    s->as = zalloc(sizeof(T) * kept * n * P);
    s->g = zalloc(sizeof(T) * (size_t)n * M);
    s->gu = zalloc(sizeof(T) * (size_t)n * P);
    s->e = zalloc(sizeof(T) * (size_t)RB * WV * VL);
    return y->AT && y->cb && y->WT && y->hVT && y->bl && y->Vr && y->hWr && y->Rc && y->rb &&
           y->Rr && y->Ar && s->acc && s->z && s->zs && s->as && s->g && s->gu && s->e;
}

static void scratch_free(Scratch *s) {
    Layout *y = &s->lay;
    void *all[] = {y->AT, y->cb, y->WT, y->hVT, y->bl, y->Vr, y->hWr, y->Rc, y->rb, y->Rr, y->Ar,
                   s->acc, s->z, s->zs, s->as, s->g, s->gu, s->e};
    for (size_t i = 0; i < sizeof all / sizeof *all; ++i) free(all[i]);
}

/* Layer k of network w into slot k (all layers held) or 0. */
static void layout_layer(const Job *J, Layout *y, size_t w, int k) {
    const size_t wk = w * J->L + k, slot = y->held == J->L ? (size_t)k : 0;
    columns(y->WT + slot * M * PV, J->W + wk * P * M, P, M, PV, 1);
    columns(y->hVT + slot * P * MV, J->V + wk * M * P, M, P, MV, J->h);
    load(y->bl + slot * PV, J->b + wk * P, PV, P);
    if (y->backward) {
        rows_of(y->Vr + slot * M * PV, J->V + wk * M * P, M, P, PV, 1);
        rows_of(y->hWr + slot * P * MV, J->W + wk * P * M, P, M, MV, J->h);
    }
}

/* Network w's embedding and readout, and all its layers when they are held; nothing when it is
 * already there. */
static void layout_network(const Job *J, Layout *y, size_t w) {
    if (y->model == (int64_t)w) return;
    columns(y->AT, J->A + w * M * D, M, D, MV, 1);
    load(y->cb, J->c + w * M, MV, M);
    columns(y->Rc, J->R + w * K * M, K, M, KV, 1);
    load(y->rb, J->r + w * K, KV, K);
    if (y->backward) {
        rows_of(y->Rr, J->R + w * K * M, K, M, MV, 1);
        if (J->want_gx) rows_of(y->Ar, J->A + w * M * D, M, D, DV, 1);
    }
    if (y->held == J->L) {
        for (int k = 0; k < J->L; ++k) layout_layer(J, y, w, k);
        y->model = (int64_t)w;
    }
}

/* Layer k's slot, laid out first when the layers are not all held. */
static size_t layer_slot(const Job *J, Layout *y, size_t w, int k) {
    if (y->held == J->L) return (size_t)k;
    layout_layer(J, y, w, k);
    return 0;
}

/* Rows [r, r + rb) of the chunk through layer k: u = W z + b, a = act(u), z += (h V) a; with
 * keep, z_k and a_k are kept in s->zs and s->as (layer-major). */
static inline __attribute__((always_inline)) void layer_rows(int rb, Scratch *s, int r, int k,
                                                            size_t slot, int n, int act, T tau,
                                                            int keep) {
    vec u[RB][WV], zk[RB][WV];
    const vec *hVT = s->lay.hVT + slot * P * MV;
    T *z = s->z + (size_t)r * M;
    T *a = keep ? s->as + ((size_t)k * n + r) * P : s->e;
    if (keep) memcpy(s->zs + ((size_t)k * n + r) * M, z, sizeof(T) * M * rb);
    affine(rb, u, z, M, M, s->lay.WT + slot * M * PV, s->lay.bl + slot * PV, PV);
    for (int q = 0; q < rb; ++q) {
        for (int v = 0; v < PV; ++v) u[q][v] = activate(u[q][v], act, tau);
        memcpy(a + q * P, u[q], sizeof(T) * P);
        load(zk[q], z + q * M, MV, M);
    }
    for (int j = 0; j < P; ++j)
        for (int q = 0; q < rb; ++q) {
            const T sj = a[q * P + j];
            for (int v = 0; v < MV; ++v) zk[q][v] += sj * hVT[j * MV + v];
        }
    for (int q = 0; q < rb; ++q) memcpy(z + q * M, zk[q], sizeof(T) * M);
}

/* The chunk's forward from x (n x D) to s->z = z_L, keeping every layer's z_k and a_k when keep. */
static void chunk_forward(const Job *J, Scratch *s, int c, int keep) {
    const int n = J->n, L = J->L;
    const T *x = J->x + (size_t)c * n * D;
    const size_t w = (size_t)J->owner[c]; /* the chunk's network */
    layout_network(J, &s->lay, w);
    for (int r = 0; r < n; r += RB) {
        const int rb = n - r >= RB ? RB : n - r;
        vec y[RB][WV];
        if (rb == RB)
            affine(RB, y, x + (size_t)r * D, D, D, s->lay.AT, s->lay.cb, MV);
        else
            affine(rb, y, x + (size_t)r * D, D, D, s->lay.AT, s->lay.cb, MV);
        for (int q = 0; q < rb; ++q) memcpy(s->z + (size_t)(r + q) * M, y[q], sizeof(T) * M);
    }
    for (int k = 0; k < L; ++k) {
        const size_t slot = layer_slot(J, &s->lay, w, k);
        int r = 0;
        for (; r + RB <= n; r += RB) layer_rows(RB, s, r, k, slot, n, J->act, J->tau, keep);
        for (; r < n; ++r) layer_rows(1, s, r, k, slot, n, J->act, J->tau, keep);
    }
}

static void *forward_job(void *arg) {
    Job *J = arg;
    Scratch s;
    if (!scratch_init(&s, J->n, J->L, 0)) {
        J->failed = 1;
        scratch_free(&s);
        return NULL;
    }
    const int n = J->n;
    for (int c = J->c0; c < J->c1; ++c) {
        chunk_forward(J, &s, c, 0);
        T *out = J->out + (size_t)c * n * K;
        for (int r = 0; r < n; r += RB) {
            const int rb = n - r >= RB ? RB : n - r;
            vec y[RB][WV];
            if (rb == RB)
                affine(RB, y, s.z + (size_t)r * M, M, M, s.lay.Rc, s.lay.rb, KV);
            else
                affine(rb, y, s.z + (size_t)r * M, M, M, s.lay.Rc, s.lay.rb, KV);
            for (int q = 0; q < rb; ++q) memcpy(out + (size_t)(r + q) * K, y[q], sizeof(T) * K);
        }
    }
    scratch_free(&s);
    return NULL;
}

/* g rows [r, r + rb) = sum_j e[j] rows[j] + (g rows when add): g_L = R^T e, g_k += h W^T gu. */
static inline __attribute__((always_inline)) void back_rows(int rb, T *g, const T *e, int in,
                                                           const vec *rows, int add) {
    vec gk[RB][WV];
    for (int q = 0; q < rb; ++q) {
        if (add)
            load(gk[q], g + q * M, MV, M);
        else
            memset(gk[q], 0, sizeof(vec) * MV);
    }
    for (int j = 0; j < in; ++j)
        for (int q = 0; q < rb; ++q) {
            const T ej = e[q * in + j];
            for (int v = 0; v < MV; ++v) gk[q][v] += ej * rows[j * MV + v];
        }
    for (int q = 0; q < rb; ++q) memcpy(g + q * M, gk[q], sizeof(T) * M);
}

/* gu rows [0, rb) = act'(u) (V^T g), act' read from a. */
static inline __attribute__((always_inline)) void gu_rows(int rb, const T *g, const T *a, T *gu,
                                                         const vec *Vr, int act) {
    vec t[RB][WV];
    affine(rb, t, g, M, M, Vr, NULL, PV);
    for (int q = 0; q < rb; ++q) {
        vec aq[WV];
        load(aq, a + q * P, PV, P);
        for (int v = 0; v < PV; ++v) t[q][v] = derivative(t[q][v], aq[v], act);
        memcpy(gu + q * P, t[q], sizeof(T) * P);
    }
}

static void *backward_job(void *arg) {
    Job *J = arg;
    const int n = J->n, L = J->L;
    Scratch s;
    if (!scratch_init(&s, n, L, 1)) {
        J->failed = 1;
        scratch_free(&s);
        return NULL;
    }
    for (int c = J->c0; c < J->c1; ++c) {
        chunk_forward(J, &s, c, 1);
        const T *e = J->e + (size_t)c * n * K;
        /* Readout: dR = sum e z_L^T, dr = sum e; g = g_L = R^T e. */
        outer_sum(J->gR + (size_t)c * K * M, J->gr + (size_t)c * K, e, K, KV, s.z, M, MV, n, 1,
                  s.acc);
        const size_t w = (size_t)J->owner[c];
        const Layout *y = &s.lay;
        int r = 0;
        for (; r + RB <= n; r += RB) back_rows(RB, s.g + r * M, e + r * K, K, y->Rr, 0);
        for (; r < n; ++r) back_rows(1, s.g + r * M, e + r * K, K, y->Rr, 0);
        for (int k = L - 1; k >= 0; --k) {
            const size_t ck = (size_t)c * L + k, slot = layer_slot(J, &s.lay, w, k);
            const vec *Vr = y->Vr + slot * M * PV, *hWr = y->hWr + slot * P * MV;
            const T *zk = s.zs + (size_t)k * n * M, *ak = s.as + (size_t)k * n * P;
            for (r = 0; r + RB <= n; r += RB)
                gu_rows(RB, s.g + r * M, ak + r * P, s.gu + r * P, Vr, J->act);
            for (; r < n; ++r) gu_rows(1, s.g + r * M, ak + r * P, s.gu + r * P, Vr, J->act);
            /* dV_k uses g_{k+1}: before g moves on to g_k. */
            outer_sum(J->gV + ck * M * P, NULL, s.g, M, MV, ak, P, PV, n, J->h, s.acc);
            outer_sum(J->gW + ck * P * M, J->gb + ck * P, s.gu, P, PV, zk, M, MV, n, J->h, s.acc);
            for (r = 0; r + RB <= n; r += RB) back_rows(RB, s.g + r * M, s.gu + r * P, P, hWr, 1);
            for (; r < n; ++r) back_rows(1, s.g + r * M, s.gu + r * P, P, hWr, 1);
        }
        /* Embedding: dA = sum g_0 x^T, dc = sum g_0; dJ/dx = A^T g_0 when asked for. */
        const T *x = J->x + (size_t)c * n * D;
        outer_sum(J->gA + (size_t)c * M * D, J->gc + (size_t)c * M, s.g, M, MV, x, D, DV, n, 1,
                  s.acc);
        if (J->want_gx) {
            for (r = 0; r < n; ++r) {
                vec gx[DV];
                memset(gx, 0, sizeof gx);
                for (int i = 0; i < M; ++i) {
                    const T gi = s.g[(size_t)r * M + i];
                    for (int v = 0; v < DV; ++v) gx[v] += gi * y->Ar[i * DV + v];
                }
                memcpy(J->gx + ((size_t)c * n + r) * D, gx, sizeof(T) * D);
            }
        }
    }
    scratch_free(&s);
    return NULL;
}

/* Chunks [0, B) in `threads` contiguous ranges, one per thread of the OpenMP team, which is
 * torch's own (the library is linked to the libgomp torch has loaded: its threads are the ones
 * already awake); nonzero when a thread's buffers could not be allocated. */
static int run(void *(*fn)(void *), Job proto, int B, int threads) {
    if (threads > B) threads = B;
    if (threads < 1) threads = 1;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(| : failed)
#endif
    {
#ifdef _OPENMP
        const int q = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int q = 0, team = 1;
#endif
        Job job = proto;
        job.c0 = (int)((long)B * q / team);
        job.c1 = (int)((long)B * (q + 1) / team);
        fn(&job);
        failed |= job.failed;
    }
    return failed;
}

/* Model e's gradient in dst (per values) from the chunks' in src (chunk-major, per values each):
 * the sum over its chunks in chunk order, as a sequential index_add would form it. */
static void reduce_by_model(T *dst, const T *src, size_t per, int E, const int *order,
                            const int *start, int threads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
    for (int e = 0; e < E; ++e) {
        T *d = dst + (size_t)e * per;
        memset(d, 0, sizeof(T) * per);
        for (int j = start[e]; j < start[e + 1]; ++j) {
            const T *g = src + (size_t)order[j] * per;
            for (size_t i = 0; i < per; ++i) d[i] += g[i];
        }
    }
    (void)threads;
}

static int owners_valid(const int64_t *owner, int B, int E) {
    for (int c = 0; c < B; ++c)
        if (owner[c] < 0 || owner[c] >= E) return 0;
    return 1;
}

/* out (B, n, K) from x (B, n, D), chunk c running network owner[c] of E: A (E, M, D), c (E, M),
 * W (E, L, P, M), b (E, L, P), V (E, L, M, P), R (E, K, M), r (E, K). Returns 0, 1 if memory
 * ran out, 2 if an owner is outside [0, E). */
int rs_forward(int B, int E, int n, int L, double h, int act, double tau, const int64_t *owner,
               const T *x, const T *A, const T *c, const T *W, const T *b, const T *V, const T *R,
               const T *r, T *out, int threads) {
    if (!owners_valid(owner, B, E)) return 2;
    Job J = {0};
    J.n = n, J.L = L, J.act = act, J.h = (T)h, J.tau = (T)tau, J.owner = owner;
    J.x = x, J.A = A, J.c = c, J.W = W, J.b = b, J.V = V, J.R = R, J.r = r, J.out = out;
    return run(forward_job, J, B, threads);
}

/* From x and e = dJ/df (B, n, K): every network's weight gradients (each in its weights' shape,
 * E leading; a network without chunks gets zeros) and, when gx is not NULL, dJ/dx (B, n, D).
 * Each chunk's gradients are formed apart, then summed per network in chunk order. Returns as
 * rs_forward. */
int rs_backward(int B, int E, int n, int L, double h, int act, double tau, const int64_t *owner,
                const T *x, const T *A, const T *c, const T *W, const T *b, const T *V, const T *R,
                const T *r, const T *e, T *gA, T *gc, T *gW, T *gb, T *gV, T *gR, T *gr, T *gx,
                int threads) {
    if (!owners_valid(owner, B, E)) return 2;
    const size_t per[7] = {(size_t)M * D, M, (size_t)L * P * M, (size_t)L * P, (size_t)L * M * P,
                           (size_t)K * M, K};
    T *dst[7] = {gA, gc, gW, gb, gV, gR, gr};
    size_t total = 0;
    for (int i = 0; i < 7; ++i) total += per[i];
    T *work = malloc(sizeof(T) * total * (size_t)(B > 0 ? B : 1));
    int *order = malloc(sizeof(int) * (size_t)(B > 0 ? B : 1));
    int *start = calloc((size_t)E + 1, sizeof(int));
    if (!work || !order || !start) {
        free(work), free(order), free(start);
        return 1;
    }
    T *part[7];
    part[0] = work;
    for (int i = 1; i < 7; ++i) part[i] = part[i - 1] + per[i - 1] * (size_t)B;
    Job J = {0};
    J.n = n, J.L = L, J.act = act, J.h = (T)h, J.tau = (T)tau, J.want_gx = gx != NULL;
    J.owner = owner, J.x = x, J.A = A, J.c = c, J.W = W, J.b = b, J.V = V, J.R = R, J.r = r;
    J.e = e, J.gx = gx;
    J.gA = part[0], J.gc = part[1], J.gW = part[2], J.gb = part[3], J.gV = part[4];
    J.gR = part[5], J.gr = part[6];
    int status = run(backward_job, J, B, threads);
    if (!status) {
        /* Chunks of each network in chunk order: a stable counting sort by owner. */
        for (int q = 0; q < B; ++q) ++start[owner[q] + 1];
        for (int m = 0; m < E; ++m) start[m + 1] += start[m];
        int *fill = malloc(sizeof(int) * ((size_t)E + 1));
        if (!fill) {
            status = 1;
        } else {
            memcpy(fill, start, sizeof(int) * (size_t)E);
            for (int q = 0; q < B; ++q) order[fill[owner[q]]++] = q;
            free(fill);
            for (int i = 0; i < 7; ++i) reduce_by_model(dst[i], part[i], per[i], E, order, start, threads);
        }
    }
    free(work), free(order), free(start);
    return status;
}
/* The library's (sizeof T, D, M, P, K), checked by the loader against what it asked for. */
void rs_shape(int *out) {
    out[0] = (int)sizeof(T);
    out[1] = D;
    out[2] = M;
    out[3] = P;
    out[4] = K;
}
