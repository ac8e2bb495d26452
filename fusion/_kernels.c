/* Fused forward and backward passes of one-input, one-output ReLU nets [1-H-1], batched over models.
 *
 * Built at install as an optional extension (setup.py) and called through ctypes by fusion/kernels.py; without it
 * fusion/params.py's torch passes run instead. A model's row of the stack `flat` (P, 3H + 1) is
 * [w1 (H), b1 (H), w2 (H), b2], the layout of fusion.params.layers for MLPSpec((1, H, 1)). Inputs `x` are (P, N)
 * with row stride `sx` (0: one row shared by every model); predictions, output gradients `g` and parameter
 * gradients are contiguous. No (N, H) activations are stored: each hidden unit's pre-activation is recomputed in the
 * backward pass, so the work is arithmetic on data in L1, not traffic to memory.
 *
 * Sums run in one fixed order per model (units in turn; points in vector lanes), so a model's result does not depend
 * on the other models in the batch.
 */
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
#define LANES 8
#define BLOCKS 4 /* point vectors per pass of the forward kernel: independent chains of adds */

static inline v8 relu(v8 z) { return (v8)((v8i)z & (z > 0.f)); }
static inline long round_up(long n, long m) { return (n + m - 1) / m * m; }

/* pred[i, k] = b2 + sum_u relu(x[i, k] w1[u] + b1[u]) w2[u]: points in vector lanes (BLOCKS vectors per pass, then
 * one), units in turn. `xp` is scratch for one model's points padded to whole vectors. */
CLONES void mlp1_forward(long p, long n, long h, const float *x, long sx, const float *flat, float *pred) {
    const long nv = (n + LANES - 1) / LANES;
    v8 *xp = aligned_alloc(32, nv * sizeof(v8)), *acc = aligned_alloc(32, nv * sizeof(v8));
    for (long i = 0; i < p; i++) {
        const float *w1 = flat + i * (3 * h + 1), *b1 = w1 + h, *w2 = b1 + h;
        if (i == 0 || sx) {
            memset(xp, 0, nv * sizeof(v8));
            memcpy(xp, x + i * sx, n * sizeof(float));
        }
        long k = 0;
        for (; k + BLOCKS <= nv; k += BLOCKS) {
            v8 s[BLOCKS];
            for (int j = 0; j < BLOCKS; j++) s[j] = (v8){} + w2[h];
            for (long u = 0; u < h; u++) {
                const float a = w1[u], b = b1[u], c = w2[u];
                for (int j = 0; j < BLOCKS; j++) s[j] += relu(xp[k + j] * a + b) * c;
            }
            for (int j = 0; j < BLOCKS; j++) acc[k + j] = s[j];
        }
        for (; k < nv; k++) {
            v8 s = (v8){} + w2[h];
            for (long u = 0; u < h; u++) s += relu(xp[k] * w1[u] + b1[u]) * w2[u];
            acc[k] = s;
        }
        memcpy(pred + i * n, acc, n * sizeof(float));
    }
    free(xp);
    free(acc);
}

/* grad = d(sum_{i,k} g[i, k] pred[i, k]) / d flat: per unit, over the points where it is on (z > 0),
 * s0 = sum g, s1 = sum g x, s2 = sum g z; then dw1 = w2 s1, db1 = w2 s0, dw2 = s2, db2 = sum g.
 * Units in vector lanes (padded with units that are never on), points in turn, two points per pass. */
CLONES void mlp1_backward(long p, long n, long h, const float *x, long sx, const float *flat, const float *g,
                          float *grad) {
    const long hp = round_up(h, LANES);
    v8 *a = aligned_alloc(32, hp * sizeof(float)), *b = aligned_alloc(32, hp * sizeof(float));
    for (long i = 0; i < p; i++) {
        const float *w1 = flat + i * (3 * h + 1), *b1 = w1 + h, *w2 = b1 + h, *xi = x + i * sx, *gi = g + i * n;
        float *gw1 = grad + i * (3 * h + 1), *gb1 = gw1 + h, *gw2 = gb1 + h;
        memset(a, 0, hp * sizeof(float));
        memset(b, 0, hp * sizeof(float));
        memcpy(a, w1, h * sizeof(float));
        memcpy(b, b1, h * sizeof(float));
        float total = 0.f;
        for (long k = 0; k < n; k++) total += gi[k];
        gw2[h] = total;
        for (long u = 0; u < hp / LANES; u++) {
            v8 s0 = {}, s1 = {}, s2 = {}, t0 = {}, t1 = {}, t2 = {};
            const v8 au = a[u], bu = b[u];
            long k = 0;
            for (; k + 1 < n; k += 2) {
                const float x0 = xi[k], x1 = xi[k + 1];
                const v8 z0 = x0 * au + bu, z1 = x1 * au + bu;
                const v8 g0 = (v8)((v8i)((v8){} + gi[k]) & (z0 > 0.f));
                const v8 g1 = (v8)((v8i)((v8){} + gi[k + 1]) & (z1 > 0.f));
                s0 += g0, s1 += g0 * x0, s2 += g0 * z0;
                t0 += g1, t1 += g1 * x1, t2 += g1 * z1;
            }
            if (k < n) {
                const float x0 = xi[k];
                const v8 z0 = x0 * au + bu, g0 = (v8)((v8i)((v8){} + gi[k]) & (z0 > 0.f));
                s0 += g0, s1 += g0 * x0, s2 += g0 * z0;
            }
            s0 += t0, s1 += t1, s2 += t2;
            for (long l = 0; l < LANES && u * LANES + l < h; l++) {
                const long j = u * LANES + l;
                gw1[j] = w2[j] * s1[l];
                gb1[j] = w2[j] * s0[l];
                gw2[j] = s2[l];
            }
        }
    }
    free(a);
    free(b);
}

/* One Adam step of torch.optim.Adam's arithmetic, in its order, on n contiguous parameters:
 * m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2; w -= step m / (sqrt(max(v, tiny)) / bc2 + eps), with
 * step = lr / (1 - beta1^t) and bc2 = sqrt(1 - beta2^t) (fusion.training._Optimizer). */
CLONES void adam_step(long n, float *w, const float *g, float *m, float *v, float step, float beta1, float beta2,
                      float bc2, float eps, float tiny) {
    const float keep = 1.f - beta1, fresh = 1.f - beta2;
#pragma omp simd
    for (long j = 0; j < n; j++) {
        m[j] = m[j] + keep * (g[j] - m[j]);
        v[j] = v[j] * beta2 + fresh * g[j] * g[j];
        const float vj = v[j] > tiny ? v[j] : tiny;
        w[j] -= step * (m[j] / (sqrtf(vj) / bc2 + eps));
    }
}

/* An importable (empty) module, so the installed file is an ordinary extension that importlib can find. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "C kernels loaded through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
