/* The untied two-layer ResNet, forward and backward, for chunks of rows with their own weights.
 *
 * Chunk c (of B) holds n inputs x (n, D) and its network's weights A (M, D), c (M), W (L, P, M),
 * b (L, P), V (L, M, P), R (K, M), r (K). For every row (docs/engine.md, "Native ResNet
 * (CPU)"; the readable form of the same recursion is resdyn/models/reference.py):
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
 * The widths D, M, P, K and the depth L are run-time arguments. What is fixed at build time is
 * the scalar type T (-DRS_DOUBLE: double, else float) and NV (-DRS_NV=...), the number of vectors
 * that hold a row of the state (M) and of the hidden layer (P): resdyn.models.native builds one
 * library per (T, NV), NV a power of two, and runs every network with max(M, P) <= NV * VL on
 * it. A row is held as NV vectors of VL lanes (GCC vector extensions, 64 bytes; lanes past a
 * width are zero and stay zero), so every loop over a row's vectors has a trip count known to
 * the compiler (and, for full rows M = P = NV VL, every loop over a row's numbers too: the layer
 * loops are instantiated for that case apart), and RB rows advance together so that their multiply-add chains overlap. The
 * input and output widths D and K, read once per row, are run-time vector counts. tanh is built
 * from an exp written out here, range reduction and polynomial, because libm's exp is scalar.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef RS_NV
#define RS_NV 1
#endif
/* Raised whenever the entry points' arguments change: the loader refuses a library of another. */
#define RS_ABI 2

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
enum {
    VL = VB / sizeof(T),  /* lanes of a vector */
    NV = RS_NV,           /* vectors of a row of width M or P */
    ROW = NV * VL,        /* elements of a padded row in the kernel's buffers */
    RB = 8                /* rows advanced together */
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
        for (int i = 0; i < cols; ++i) ((T *)(out + (size_t)i * rv))[j] = s * S[j * cols + i];
}

/* Rows of a row-major (rows x cols) matrix S, times s, as rows x (cols in vectors). */
static void rows_of(vec *out, const T *S, int rows, int cols, int cv, T s) {
    for (int j = 0; j < rows; ++j) {
        load(out + (size_t)j * cv, S + (size_t)j * cols, cv, cols);
        for (int v = 0; v < cv; ++v) out[(size_t)j * cv + v] *= s;
    }
}

/* For rows q < rb: y[q] = bias + sum_i x[q][i] cols[i] (NV vectors; bias may be NULL), with x
 * rows of width in at stride xs. The sum runs over i in order for every row. */
static inline __attribute__((always_inline)) void affine(int rb, vec y[][NV], const T *x, int xs,
                                                        int in, const vec *cols, const vec *bias) {
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) y[q][v] = bias ? bias[v] : (vec){0};
    for (int i = 0; i < in; ++i)
        for (int q = 0; q < rb; ++q) {
            const T s = x[q * xs + i];
            for (int v = 0; v < NV; ++v) y[q][v] += s * cols[i * NV + v];
        }
}

/* out = s sum_r x[r] y[r]^T (I x J, row-major), rows summed in order, accumulating in acc
 * (I x jv vectors); with xsum, also xsum = s sum_r x[r] (summed in iv vectors). x rows are at
 * stride xs, y rows at stride ys; a padded row (xpad, ypad: the kernel's own buffers, NV aligned
 * vectors) is read in place, another is loaded into buf (jv + iv vectors). */
static inline __attribute__((always_inline)) void outer_sum(
    T *out, T *xsum, const T *x, int xs, int I, int iv, int xpad, const T *y, int ys, int J,
    int jv, int ypad, int n, T s, vec *restrict acc, vec *restrict buf) {
    vec sum[NV], *wide = buf + jv; /* the x sum in registers when it is one padded row */
    vec *xsums = xpad ? sum : wide;
    memset(acc, 0, sizeof(vec) * (size_t)I * jv);
    memset(xsums, 0, sizeof(vec) * iv);
    for (int r = 0; r < n; ++r) {
        const T *xr = x + (size_t)r * xs;
        vec yl[NV];
        const vec *yv = yl;
        if (ypad)
            memcpy(yl, y + (size_t)r * ys, sizeof yl);
        else {
            load(buf, y + (size_t)r * ys, jv, J);
            yv = buf;
        }
        for (int i = 0; i < I; ++i) {
            const T xi = xr[i];
            for (int v = 0; v < jv; ++v) acc[(size_t)i * jv + v] += xi * yv[v];
        }
        if (!xsum) continue;
        if (xpad) {
            for (int v = 0; v < NV; ++v) sum[v] += ((const vec *)xr)[v];
        } else {
            for (int i = 0; i < I; ++i) ((T *)wide)[i] += xr[i];
        }
    }
    for (int i = 0; i < I; ++i)
        for (int j = 0; j < J; ++j) out[(size_t)i * J + j] = s * lane(acc + (size_t)i * jv, j);
    if (xsum)
        for (int i = 0; i < I; ++i) xsum[i] = s * lane(xsums, i);
}

/* One network's weights laid out for the row loops. All L layers are held when they fit in
 * LAYOUT_BYTES, so that a thread lays out each network once per call however many chunks it
 * has; otherwise one layer is held and laid out again for every chunk. */
enum { LAYOUT_BYTES = 4 << 20 };
typedef struct {
    vec *AT, *cb;           /* embedding: columns of A (D x NV), c (NV) */
    vec *WT, *hVT, *bl;     /* per held layer: columns of W (M x NV), of h V (P x NV), b (NV) */
    vec *Vr, *hWr;          /* backward, per held layer: rows of V (M x NV), of h W (P x NV) */
    vec *Rc, *rb, *Rr, *Ar; /* columns of R (M x KV), r (KV); rows of R (K x NV), of A (M x DV) */
    int held, backward;     /* layers held (L or 1); whether the backward's parts are laid out */
    int64_t model;          /* the network whose layers are all held, -1: none */
} Layout;

/* Everything one thread needs for its chunks, allocated once per thread and call. Rows of width
 * M or P are kept padded to NV vectors. */
typedef struct {
    Layout lay;
    vec *acc, *buf;               /* accumulators of the gradient sums; loaded rows */
    vec *z, *zs, *as, *g, *gu, *a; /* rows: state, kept layers, gradients, activations */
} Scratch;

typedef struct {
    int c0, c1, n, L, act, want_gx;
    int D, M, P, K, DV, KV; /* widths, and the vectors of a row of D and of K values */
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

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

static int scratch_init(Scratch *s, const Job *J, int backward) {
    memset(s, 0, sizeof *s);
    Layout *y = &s->lay;
    const size_t n = (size_t)J->n, M = (size_t)J->M, P = (size_t)J->P, D = (size_t)J->D;
    const size_t K = (size_t)J->K, DV = (size_t)J->DV, KV = (size_t)J->KV;
    const size_t per_layer = sizeof(vec) * ((M * NV + P * NV + NV) * (backward ? 2 : 1));
    y->held = (size_t)J->L * per_layer <= LAYOUT_BYTES ? J->L : 1;
    y->backward = backward;
    y->model = -1;
    const size_t held = (size_t)y->held;
    y->AT = zalloc(sizeof(vec) * D * NV);
    y->cb = zalloc(sizeof(vec) * NV);
    y->WT = zalloc(sizeof(vec) * held * M * NV);
    y->hVT = zalloc(sizeof(vec) * held * P * NV);
    y->bl = zalloc(sizeof(vec) * held * NV);
    y->Vr = zalloc(sizeof(vec) * held * M * NV);
    y->hWr = zalloc(sizeof(vec) * held * P * NV);
    y->Rc = zalloc(sizeof(vec) * M * KV);
    y->rb = zalloc(sizeof(vec) * KV);
    y->Rr = zalloc(sizeof(vec) * K * NV);
    y->Ar = zalloc(sizeof(vec) * M * DV);
    s->acc = zalloc(sizeof(vec) * max3((M > P ? M : P) * NV, K * NV, M * DV));
    s->buf = zalloc(sizeof(vec) * (DV + KV + 2 * NV));
    const size_t kept = backward ? (size_t)J->L : 0; /* the forward keeps no layers */
    s->z = zalloc(sizeof(vec) * n * NV);
    s->zs = zalloc(sizeof(vec) * kept * n * NV);
    s->as = zalloc(sizeof(vec) * kept * n * NV);
    s->g = zalloc(sizeof(vec) * n * NV);
    s->gu = zalloc(sizeof(vec) * n * NV);
    s->a = zalloc(sizeof(vec) * (size_t)RB * NV);
    return y->AT && y->cb && y->WT && y->hVT && y->bl && y->Vr && y->hWr && y->Rc && y->rb &&
           y->Rr && y->Ar && s->acc && s->buf && s->z && s->zs && s->as && s->g && s->gu && s->a;
}

static void scratch_free(Scratch *s) {
    Layout *y = &s->lay;
    void *all[] = {y->AT, y->cb, y->WT, y->hVT, y->bl, y->Vr, y->hWr, y->Rc, y->rb, y->Rr, y->Ar,
                   s->acc, s->buf, s->z, s->zs, s->as, s->g, s->gu, s->a};
    for (size_t i = 0; i < sizeof all / sizeof *all; ++i) free(all[i]);
}

/* Layer k of network w into slot k (all layers held) or 0. */
static void layout_layer(const Job *J, Layout *y, size_t w, int k) {
    const int M = J->M, P = J->P;
    const size_t wk = w * J->L + k, slot = y->held == J->L ? (size_t)k : 0;
    columns(y->WT + slot * M * NV, J->W + wk * P * M, P, M, NV, 1);
    columns(y->hVT + slot * P * NV, J->V + wk * M * P, M, P, NV, J->h);
    load(y->bl + slot * NV, J->b + wk * P, NV, P);
    if (y->backward) {
        rows_of(y->Vr + slot * M * NV, J->V + wk * M * P, M, P, NV, 1);
        rows_of(y->hWr + slot * P * NV, J->W + wk * P * M, P, M, NV, J->h);
    }
}

/* Network w's embedding and readout, and all its layers when they are held; nothing when it is
 * already there. */
static void layout_network(const Job *J, Layout *y, size_t w) {
    if (y->model == (int64_t)w) return;
    const int D = J->D, M = J->M, K = J->K;
    columns(y->AT, J->A + w * M * D, M, D, NV, 1);
    load(y->cb, J->c + w * M, NV, M);
    columns(y->Rc, J->R + w * K * M, K, M, J->KV, 1);
    load(y->rb, J->r + w * K, J->KV, K);
    if (y->backward) {
        rows_of(y->Rr, J->R + w * K * M, K, M, NV, 1);
        if (J->want_gx) rows_of(y->Ar, J->A + w * M * D, M, D, J->DV, 1);
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
static inline __attribute__((always_inline)) void layer_rows(int rb, const Job *J, Scratch *s,
                                                            int r, int k, size_t slot, int keep,
                                                            int M, int P) {
    const int n = J->n;
    vec u[RB][NV], zk[RB][NV];
    const vec *hVT = s->lay.hVT + slot * P * NV;
    vec *z = s->z + (size_t)r * NV;
    vec *a = keep ? s->as + ((size_t)k * n + r) * NV : s->a;
    if (keep) memcpy(s->zs + ((size_t)k * n + r) * NV, z, sizeof(vec) * NV * rb);
    affine(rb, u, (const T *)z, ROW, M, s->lay.WT + slot * M * NV, s->lay.bl + slot * NV);
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) {
            a[q * NV + v] = activate(u[q][v], J->act, J->tau);
            zk[q][v] = z[q * NV + v];
        }
    for (int j = 0; j < P; ++j)
        for (int q = 0; q < rb; ++q) {
            const T sj = lane(a + q * NV, j);
            for (int v = 0; v < NV; ++v) zk[q][v] += sj * hVT[j * NV + v];
        }
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) z[q * NV + v] = zk[q][v];
}

/* The chunk's layers from s->z = z_0 to z_L (network w), with widths M and P. */
static inline __attribute__((always_inline)) void chunk_layers(const Job *J, Scratch *s, size_t w,
                                                              int keep, int M, int P) {
    const int n = J->n;
    for (int k = 0; k < J->L; ++k) {
        const size_t slot = layer_slot(J, &s->lay, w, k);
        int r = 0;
        for (; r + RB <= n; r += RB) layer_rows(RB, J, s, r, k, slot, keep, M, P);
        for (; r < n; ++r) layer_rows(1, J, s, r, k, slot, keep, M, P);
    }
}

/* The chunk's forward from x (n x D) to s->z = z_L, keeping every layer's z_k and a_k when keep. */
static void chunk_forward(const Job *J, Scratch *s, int c, int keep) {
    const int n = J->n, D = J->D;
    const T *x = J->x + (size_t)c * n * D;
    const size_t w = (size_t)J->owner[c]; /* the chunk's network */
    layout_network(J, &s->lay, w);
    for (int r = 0; r < n; r += RB) {
        const int rb = n - r >= RB ? RB : n - r;
        vec y[RB][NV];
        if (rb == RB)
            affine(RB, y, x + (size_t)r * D, D, D, s->lay.AT, s->lay.cb);
        else
            affine(rb, y, x + (size_t)r * D, D, D, s->lay.AT, s->lay.cb);
        memcpy(s->z + (size_t)r * NV, y, sizeof(vec) * NV * rb);
    }
    if (J->M == ROW && J->P == ROW)
        chunk_layers(J, s, w, keep, ROW, ROW); /* full rows: every loop's trip count is known */
    else
        chunk_layers(J, s, w, keep, J->M, J->P);
}

/* out rows [0, rb) (K values each) = R z + r for padded rows z, NV output vectors at a time. */
static void readout_rows(const Job *J, const Layout *y, int rb, const vec *z, T *out) {
    const int M = J->M, K = J->K, KV = J->KV;
    for (int v0 = 0; v0 < KV; v0 += NV) {
        const int nv = KV - v0 < NV ? KV - v0 : NV;
        vec acc[RB][NV];
        for (int q = 0; q < rb; ++q)
            for (int v = 0; v < nv; ++v) acc[q][v] = y->rb[v0 + v];
        for (int i = 0; i < M; ++i)
            for (int q = 0; q < rb; ++q) {
                const T s = lane(z + q * NV, i);
                for (int v = 0; v < nv; ++v) acc[q][v] += s * y->Rc[(size_t)i * KV + v0 + v];
            }
        const int lanes = K - v0 * VL < nv * VL ? K - v0 * VL : nv * VL;
        for (int q = 0; q < rb; ++q) memcpy(out + (size_t)q * K + v0 * VL, acc[q], sizeof(T) * lanes);
    }
}

static void *forward_job(void *arg) {
    Job *J = arg;
    Scratch s;
    if (!scratch_init(&s, J, 0)) {
        J->failed = 1;
        scratch_free(&s);
        return NULL;
    }
    const int n = J->n;
    for (int c = J->c0; c < J->c1; ++c) {
        chunk_forward(J, &s, c, 0);
        T *out = J->out + (size_t)c * n * J->K;
        for (int r = 0; r < n; r += RB) {
            const int rb = n - r >= RB ? RB : n - r;
            readout_rows(J, &s.lay, rb, s.z + (size_t)r * NV, out + (size_t)r * J->K);
        }
    }
    scratch_free(&s);
    return NULL;
}

/* g rows [0, rb) = sum_j e[q][j] rows[j] + (g rows when add), e rows of width in at stride es:
 * g_L = R^T e, g_k += h W^T gu. */
static inline __attribute__((always_inline)) void back_rows(int rb, vec *g, const T *e, int es,
                                                           int in, const vec *rows, int add) {
    vec gk[RB][NV];
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) gk[q][v] = add ? g[q * NV + v] : (vec){0};
    for (int j = 0; j < in; ++j)
        for (int q = 0; q < rb; ++q) {
            const T ej = e[q * es + j];
            for (int v = 0; v < NV; ++v) gk[q][v] += ej * rows[j * NV + v];
        }
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) g[q * NV + v] = gk[q][v];
}

/* gu rows [0, rb) = act'(u) (V^T g), act' read from a. */
static inline __attribute__((always_inline)) void gu_rows(int rb, int M, const vec *g,
                                                         const vec *a, vec *gu, const vec *Vr,
                                                         int act) {
    vec t[RB][NV];
    affine(rb, t, (const T *)g, ROW, M, Vr, NULL);
    for (int q = 0; q < rb; ++q)
        for (int v = 0; v < NV; ++v) gu[q * NV + v] = derivative(t[q][v], a[q * NV + v], act);
}

/* The gradients of layer k of chunk c (network w) from s->g = g_{k+1}, leaving g_k in s->g;
 * widths M and P. */
static inline __attribute__((always_inline)) void backward_layer_of(const Job *J, Scratch *s,
                                                                   int c, size_t w, int k, int M,
                                                                   int P) {
    const int n = J->n;
    const size_t ck = (size_t)c * J->L + k, slot = layer_slot(J, &s->lay, w, k);
    const vec *Vr = s->lay.Vr + slot * M * NV, *hWr = s->lay.hWr + slot * P * NV;
    const vec *zk = s->zs + (size_t)k * n * NV, *ak = s->as + (size_t)k * n * NV;
    int r = 0;
    for (; r + RB <= n; r += RB)
        gu_rows(RB, M, s->g + r * NV, ak + r * NV, s->gu + r * NV, Vr, J->act);
    for (; r < n; ++r) gu_rows(1, M, s->g + r * NV, ak + r * NV, s->gu + r * NV, Vr, J->act);
    /* dV_k uses g_{k+1}: before g moves on to g_k. */
    outer_sum(J->gV + ck * M * P, NULL, (const T *)s->g, ROW, M, NV, 1, (const T *)ak, ROW, P,
              NV, 1, n, J->h, s->acc, s->buf);
    outer_sum(J->gW + ck * P * M, J->gb + ck * P, (const T *)s->gu, ROW, P, NV, 1,
              (const T *)zk, ROW, M, NV, 1, n, J->h, s->acc, s->buf);
    for (r = 0; r + RB <= n; r += RB)
        back_rows(RB, s->g + r * NV, (const T *)(s->gu + r * NV), ROW, P, hWr, 1);
    for (; r < n; ++r) back_rows(1, s->g + r * NV, (const T *)(s->gu + r * NV), ROW, P, hWr, 1);
}

static void backward_layer(const Job *J, Scratch *s, int c, size_t w, int k) {
    if (J->M == ROW && J->P == ROW)
        backward_layer_of(J, s, c, w, k, ROW, ROW); /* full rows: trip counts known */
    else
        backward_layer_of(J, s, c, w, k, J->M, J->P);
}

/* dJ/dx rows of chunk c = A^T g_0. */
static void input_gradient(const Job *J, Scratch *s, int c) {
    const int D = J->D, DV = J->DV;
    vec *gx = s->buf;
    for (int r = 0; r < J->n; ++r) {
        memset(gx, 0, sizeof(vec) * DV);
        for (int i = 0; i < J->M; ++i) {
            const T gi = lane(s->g + (size_t)r * NV, i);
            for (int v = 0; v < DV; ++v) gx[v] += gi * s->lay.Ar[(size_t)i * DV + v];
        }
        memcpy(J->gx + ((size_t)c * J->n + r) * D, gx, sizeof(T) * D);
    }
}

static void *backward_job(void *arg) {
    Job *J = arg;
    const int n = J->n, D = J->D, M = J->M, K = J->K;
    Scratch s;
    if (!scratch_init(&s, J, 1)) {
        J->failed = 1;
        scratch_free(&s);
        return NULL;
    }
    for (int c = J->c0; c < J->c1; ++c) {
        chunk_forward(J, &s, c, 1);
        const T *e = J->e + (size_t)c * n * K;
        /* Readout: dR = sum e z_L^T, dr = sum e; g = g_L = R^T e. */
        outer_sum(J->gR + (size_t)c * K * M, J->gr + (size_t)c * K, e, K, K, J->KV, 0,
                  (const T *)s.z, ROW, M, NV, 1, n, 1, s.acc, s.buf);
        const size_t w = (size_t)J->owner[c];
        int r = 0;
        for (; r + RB <= n; r += RB) back_rows(RB, s.g + r * NV, e + r * K, K, K, s.lay.Rr, 0);
        for (; r < n; ++r) back_rows(1, s.g + r * NV, e + r * K, K, K, s.lay.Rr, 0);
        for (int k = J->L - 1; k >= 0; --k) backward_layer(J, &s, c, w, k);
        /* Embedding: dA = sum g_0 x^T, dc = sum g_0; dJ/dx = A^T g_0 when asked for. */
        outer_sum(J->gA + (size_t)c * M * D, J->gc + (size_t)c * M, (const T *)s.g, ROW, M, NV,
                  1, J->x + (size_t)c * n * D, D, D, J->DV, 0, n, 1, s.acc, s.buf);
        if (J->want_gx) input_gradient(J, &s, c);
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

/* 0 when the call can run: owners in [0, E) (else 2), M and P within this build's NV vectors
 * and every width positive (else 3). */
static int check_call(const int64_t *owner, int B, int E, int D, int M, int P, int K) {
    for (int c = 0; c < B; ++c)
        if (owner[c] < 0 || owner[c] >= E) return 2;
    if (D < 1 || M < 1 || P < 1 || K < 1 || M > ROW || P > ROW) return 3;
    return 0;
}

static Job make_job(int n, int L, int D, int M, int P, int K, double h, int act, double tau,
                    const int64_t *owner, const T *x, const T *A, const T *c, const T *W,
                    const T *b, const T *V, const T *R, const T *r) {
    Job J = {0};
    J.n = n, J.L = L, J.act = act, J.h = (T)h, J.tau = (T)tau, J.owner = owner;
    J.D = D, J.M = M, J.P = P, J.K = K, J.DV = (D + VL - 1) / VL, J.KV = (K + VL - 1) / VL;
    J.x = x, J.A = A, J.c = c, J.W = W, J.b = b, J.V = V, J.R = R, J.r = r;
    return J;
}

/* out (B, n, K) from x (B, n, D), chunk c running network owner[c] of E: A (E, M, D), c (E, M),
 * W (E, L, P, M), b (E, L, P), V (E, L, M, P), R (E, K, M), r (E, K). Returns 0, 1 if memory
 * ran out, 2 if an owner is outside [0, E), 3 if a width does not fit this build. */
int rs_forward(int B, int E, int n, int L, int D, int M, int P, int K, double h, int act,
               double tau, const int64_t *owner, const T *x, const T *A, const T *c, const T *W,
               const T *b, const T *V, const T *R, const T *r, T *out, int threads) {
    const int bad = check_call(owner, B, E, D, M, P, K);
    if (bad) return bad;
    Job J = make_job(n, L, D, M, P, K, h, act, tau, owner, x, A, c, W, b, V, R, r);
    J.out = out;
    return run(forward_job, J, B, threads);
}

/* Chunks of each network in chunk order (a stable counting sort by owner), then every
 * gradient of the 7 in part summed per network into dst. */
static int reduce_all(T *dst[7], T *part[7], const size_t per[7], const int64_t *owner, int B,
                      int E, int threads) {
    int *order = malloc(sizeof(int) * (size_t)(B > 0 ? B : 1));
    int *start = calloc((size_t)E + 1, sizeof(int));
    int *fill = malloc(sizeof(int) * ((size_t)E + 1));
    const int ok = order && start && fill;
    if (ok) {
        for (int q = 0; q < B; ++q) ++start[owner[q] + 1];
        for (int m = 0; m < E; ++m) start[m + 1] += start[m];
        memcpy(fill, start, sizeof(int) * (size_t)E);
        for (int q = 0; q < B; ++q) order[fill[owner[q]]++] = q;
        for (int i = 0; i < 7; ++i) reduce_by_model(dst[i], part[i], per[i], E, order, start, threads);
    }
    free(order), free(start), free(fill);
    return ok ? 0 : 1;
}

/* From x and e = dJ/df (B, n, K): every network's weight gradients (each in its weights' shape,
 * E leading; a network without chunks gets zeros) and, when gx is not NULL, dJ/dx (B, n, D).
 * Each chunk's gradients are formed apart, then summed per network in chunk order. Returns as
 * rs_forward. */
int rs_backward(int B, int E, int n, int L, int D, int M, int P, int K, double h, int act,
                double tau, const int64_t *owner, const T *x, const T *A, const T *c, const T *W,
                const T *b, const T *V, const T *R, const T *r, const T *e, T *gA, T *gc, T *gW,
                T *gb, T *gV, T *gR, T *gr, T *gx, int threads) {
    const int bad = check_call(owner, B, E, D, M, P, K);
    if (bad) return bad;
    const size_t per[7] = {(size_t)M * D, M, (size_t)L * P * M, (size_t)L * P, (size_t)L * M * P,
                           (size_t)K * M, K};
    T *dst[7] = {gA, gc, gW, gb, gV, gR, gr};
    size_t total = 0;
    for (int i = 0; i < 7; ++i) total += per[i];
    T *work = malloc(sizeof(T) * total * (size_t)(B > 0 ? B : 1));
    if (!work) return 1;
    T *part[7];
    part[0] = work;
    for (int i = 1; i < 7; ++i) part[i] = part[i - 1] + per[i - 1] * (size_t)B;
    Job J = make_job(n, L, D, M, P, K, h, act, tau, owner, x, A, c, W, b, V, R, r);
    J.want_gx = gx != NULL, J.e = e, J.gx = gx;
    J.gA = part[0], J.gc = part[1], J.gW = part[2], J.gb = part[3], J.gV = part[4];
    J.gR = part[5], J.gr = part[6];
    int status = run(backward_job, J, B, threads);
    if (!status) status = reduce_all(dst, part, per, owner, B, E, threads);
    free(work);
    return status;
}

/* What the loader checks against what it asked for: (sizeof T, NV, RS_ABI, built with OpenMP). */
void rs_info(int *out) {
    out[0] = (int)sizeof(T);
    out[1] = NV;
    out[2] = RS_ABI;
#ifdef _OPENMP
    out[3] = 1;
#else
    out[3] = 0;
#endif
}
