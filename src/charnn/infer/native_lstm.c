/* One character of a charnn LSTM, one stream, float32 or int8 weights: `--backend native`.
 *
 * Sampling one stream reads every weight once per character, so its speed is bounded by
 * memory bandwidth. torch runs the step as ~30 separate calls; this file runs it as one, the
 * matrix rows of each layer split between the threads, so the weights stream at close to the
 * bandwidth and the rest of the step costs a few microseconds. Layouts are those of
 * charnn.infer.steps.FusedStep (torch's gate order i, f, g, o):
 *   table  vocab x 4H        layer 0's input projection of each character, both biases added
 *   w0     4H x H            layer 0's recurrent weights
 *   w      (L-1) x 4H x 2H   layer k >= 1: [W_ih | W_hh], applied to [h_{k-1} new, h_k old]
 *   b      (L-1) x 4H        layer k >= 1: b_ih + b_hh
 *   wh, bh vocab x H, vocab  the head
 * With int8 set, the three kinds of matrix are int8 with one float32 scale per row (symmetric),
 * 4x fewer bytes a step, and each layer's input is quantised on the fly (see quantize_u8).
 * Built by charnn.infer.native with the machine's C compiler; without OpenMP it runs on one
 * thread. Each row's sum is the same whatever the number of threads.
 */
#ifdef _OPENMP
#include <omp.h>
#endif
#include <math.h>
#if defined(_OPENMP) && defined(__x86_64__) && defined(__GLIBC__)
#if __GLIBC_PREREQ(2, 35)
/* glibc's vector expf and tanhf (libmvec, within 4 ulp; tanhf since glibc 2.35), which its
 * headers declare only under -ffast-math: the cell's loop then runs a vector of units at a
 * time. charnn.infer.native loads the built library before keeping it, so a missing variant
 * means the next, plainer build, never a failed call. */
#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern float tanhf(float);
#endif
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef struct {
    int layers, hidden, vocab, int8;
    const float *table, *w0, *w, *b, *wh, *bh; /* w0, w, wh: float32 weights when int8 == 0 */
    const signed char *q0, *q, *qh;            /* int8 == 1: the same matrices in int8 ... */
    const float *s0, *s, *sh;                  /* ... times one scale per row ... */
    const int *r0, *r, *rh;                    /* ... and each row's sum of its int8 values */
} charnn_lstm;

/* Four rows `stride` apart, dotted with x in one pass over x. */
static inline void dot4(const float *restrict a, long stride, const float *restrict x, int n,
                        float *out) {
    const float *a0 = a, *a1 = a + stride, *a2 = a + 2 * stride, *a3 = a + 3 * stride;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int k = 0; k < n; k++) {
        const float v = x[k];
        s0 += a0[k] * v;
        s1 += a1[k] * v;
        s2 += a2[k] * v;
        s3 += a3[k] * v;
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* int8 layers: the input vector is quantised too, once per layer and step (symmetric, one
 * scale: its largest |x| becomes 127), and stored as unsigned codes x + 128, so that each
 * product is an exact integer sum of u8 x s8 (AVX-512 VNNI: 64 of them per instruction),
 * corrected by 128 x the row's sum. Integer sums are exact, so the products are the same with
 * VNNI or without. */
static float quantize_u8(const float *x, int n, unsigned char *out) {
    float top = 0.f;
#pragma omp simd reduction(max : top)
    for (int k = 0; k < n; k++) {
        const float a = fabsf(x[k]);
        top = a > top ? a : top;
    }
    const float scale = top > 0.f ? top / 127.f : 1.f;
#pragma omp simd
    for (int k = 0; k < n; k++) out[k] = (unsigned char)((int)nearbyintf(x[k] / scale) + 128);
    return scale;
}

static inline void dot4_u8s8(const unsigned char *restrict x, const signed char *restrict a, long stride,
                             int n, int *out) {
    const signed char *a0 = a, *a1 = a + stride, *a2 = a + 2 * stride, *a3 = a + 3 * stride;
    int s0 = 0, s1 = 0, s2 = 0, s3 = 0, k0 = 0;
#ifdef __AVX512VNNI__
    __m512i v0 = _mm512_setzero_si512(), v1 = _mm512_setzero_si512(), v2 = _mm512_setzero_si512(),
            v3 = _mm512_setzero_si512();
    for (; k0 + 64 <= n; k0 += 64) {
        const __m512i xv = _mm512_loadu_si512((const void *)(x + k0));
        v0 = _mm512_dpbusd_epi32(v0, xv, _mm512_loadu_si512((const void *)(a0 + k0)));
        v1 = _mm512_dpbusd_epi32(v1, xv, _mm512_loadu_si512((const void *)(a1 + k0)));
        v2 = _mm512_dpbusd_epi32(v2, xv, _mm512_loadu_si512((const void *)(a2 + k0)));
        v3 = _mm512_dpbusd_epi32(v3, xv, _mm512_loadu_si512((const void *)(a3 + k0)));
    }
    s0 = _mm512_reduce_add_epi32(v0), s1 = _mm512_reduce_add_epi32(v1);
    s2 = _mm512_reduce_add_epi32(v2), s3 = _mm512_reduce_add_epi32(v3);
#endif
    for (int k = k0; k < n; k++) {
        const int v = x[k];
        s0 += v * a0[k], s1 += v * a1[k], s2 += v * a2[k], s3 += v * a3[k];
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

static inline int dot_u8s8(const unsigned char *restrict x, const signed char *restrict a, int n) {
    int s = 0;
    for (int k = 0; k < n; k++) s += x[k] * a[k];
    return s;
}

static inline float dot(const float *restrict a, const float *restrict x, int n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < n; k++) s += a[k] * x[k];
    return s;
}

static inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

#define CHARNN_BLOCK 16

/* One unit range [lo, hi) of layer l: gates, cell and hidden state. The gates of a block of
 * units are gathered first, then the cell runs over the block as one vector loop (sigmoid
 * and tanh one unit at a time cost more than the matrix rows of an int8 step). */
static void layer_units(const charnn_lstm *m, int l, int id, const float *x, const unsigned char *xq,
                        float sx, const float *c_in, float *h_out, float *c_out, int lo, int hi) {
    const int H = m->hidden;
    const int n = l == 0 ? H : 2 * H;                 /* the row length of this layer */
    const long first = l == 0 ? 0 : (l - 1) * 4L * H; /* its first row among the stacked layers */
    /* layer 0 adds its input part (both biases in it), a deeper layer its biases */
    const float *add = l == 0 ? m->table + (long)id * 4 * H : m->b + first;
    for (int j0 = lo; j0 < hi; j0 += CHARNN_BLOCK) {
        const int nb = hi - j0 < CHARNN_BLOCK ? hi - j0 : CHARNN_BLOCK;
        float gi[CHARNN_BLOCK], gf[CHARNN_BLOCK], gg[CHARNN_BLOCK], go[CHARNN_BLOCK];
        for (int u = 0; u < nb; u++) {
            const int j = j0 + u;
            float g[4];
            if (m->int8) {
                const float *scale = (l == 0 ? m->s0 : m->s) + first + j;
                const int *rows = (l == 0 ? m->r0 : m->r) + first + j;
                int acc[4];
                dot4_u8s8(xq, (l == 0 ? m->q0 : m->q) + (first + j) * n, (long)H * n, n, acc);
                for (int q = 0; q < 4; q++)
                    g[q] = (float)(acc[q] - 128 * rows[(long)q * H]) * (sx * scale[(long)q * H]);
            } else {
                dot4((l == 0 ? m->w0 : m->w) + (first + j) * n, (long)H * n, x, n, g);
            }
            gi[u] = g[0] + add[j], gf[u] = g[1] + add[H + j];
            gg[u] = g[2] + add[2L * H + j], go[u] = g[3] + add[3L * H + j];
        }
#pragma omp simd
        for (int u = 0; u < nb; u++) {
            const float c = sigmoid(gf[u]) * c_in[j0 + u] + sigmoid(gi[u]) * tanhf(gg[u]);
            c_out[j0 + u] = c;
            h_out[j0 + u] = sigmoid(go[u]) * tanhf(c);
        }
    }
}

/* Thread t of T's share of one step: h_in, c_in, h_out, c_out: layers x H; logits: vocab;
 * xh: 2H of scratch shared by the team. The caller's barrier ends the step. */
static void step_share(const charnn_lstm *m, int id, const float *h_in, const float *c_in, float *h_out,
                       float *c_out, float *logits, float *xh, int t, int T) {
    const int H = m->hidden, L = m->layers, V = m->vocab;
    /* whole blocks of units per thread, so that a unit's cell runs in the same lane of the
     * same block whatever the number of threads: the same numbers on 1 thread or 16 */
    const int blocks = (H + CHARNN_BLOCK - 1) / CHARNN_BLOCK;
    const int lo = blocks * t / T * CHARNN_BLOCK, hi_block = blocks * (t + 1) / T * CHARNN_BLOCK;
    const int hi = hi_block < H ? hi_block : H;
    unsigned char xq[m->int8 ? 2 * H : 1]; /* this thread's codes of a layer's input (int8) */
    float sx = 1.f;
    for (int l = 0; l < L; l++) {
        const float *x = l == 0 ? h_in : xh;
        if (m->int8) sx = quantize_u8(x, l == 0 ? H : 2 * H, xq);
        layer_units(m, l, id, x, xq, sx, c_in + (long)l * H, h_out + (long)l * H, c_out + (long)l * H,
                    lo, hi);
#pragma omp barrier
        if (l + 1 < L) { /* the next layer's input: [this layer's new h, its own old h] */
            for (int j = lo; j < hi; j++) {
                xh[j] = h_out[(long)l * H + j];
                xh[H + j] = h_in[(long)(l + 1) * H + j];
            }
#pragma omp barrier
        }
    }
    const float *h = h_out + (long)(L - 1) * H;
    if (m->int8) sx = quantize_u8(h, H, xq);
    for (int v = V * t / T; v < V * (t + 1) / T; v++)
        logits[v] = m->bh[v] + (m->int8 ? (float)(dot_u8s8(xq, m->qh + (long)v * H, H) - 128 * m->rh[v])
                                              * (sx * m->sh[v])
                                        : dot(m->wh + (long)v * H, h, H));
}

static inline int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int team_member(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* One character: h_in, c_in, h_out, c_out: layers x H; logits: vocab; xh: 2H of scratch. */
void charnn_lstm_step(const charnn_lstm *m, int id, const float *h_in, const float *c_in,
                      float *h_out, float *c_out, float *logits, float *xh, int threads) {
    (void)threads;
#pragma omp parallel num_threads(threads)
    step_share(m, id, h_in, c_in, h_out, c_out, logits, xh, team_member(), team_size());
}

/* The draw of charnn.infer.sampling.sample_next for one stream with nothing cut: the argmax of
 * softmax(logits / t) / noise (torch.multinomial's own draw), a banned id never. Returns the
 * id, or -1 for a row float32 cannot carry (an infinite or NaN logit / t, nothing left): the
 * caller draws that one in Python, exactly as sample_next would. */
static int draw(const float *logits, const unsigned char *banned, float t, const float *noise, int V,
                float *work) {
    float top = -INFINITY;
    for (int v = 0; v < V; v++) {
        const float x = banned[v] ? -INFINITY : logits[v] / t;
        work[v] = x;
        if (isnan(x)) return -1;
        if (x > top) top = x;
    }
    if (!isfinite(top)) return -1;
    float sum = 0.f;
    for (int v = 0; v < V; v++) sum += work[v] = expf(work[v] - top);
    int best = -1;
    float best_score = -1.f;
    for (int v = 0; v < V; v++) {
        const float score = work[v] / sum / noise[v];
        if (isnan(score)) return -1;
        if (score > best_score) best_score = score, best = v; /* the first of equal scores */
    }
    return best;
}

/* Up to n characters of charnn.infer.sampling.generate for one stream: draw from `logits` with
 * noise row k, then step the drawn id. logits (V), h, c (layers x H) are read and left as they
 * are after the last step; ids (n) receives the draws; scratch: h2, c2 (layers x H), xh (2H),
 * work (V). Returns n, or the k < n at which row k needs Python's draw (logits, h and c then
 * as they were before it). */
int charnn_lstm_generate(const charnn_lstm *m, int n, const float *noise, float t,
                         const unsigned char *banned, float *logits, float *h, float *c, float *h2,
                         float *c2, float *xh, float *work, int *ids, int threads) {
    int done = n, id = 0;
    (void)threads;
    /* one team for the whole chunk: one thread draws, all step; the state swaps buffers */
#pragma omp parallel num_threads(threads)
    {
        const int T = team_size(), me = team_member();
        const float *h_in = h, *c_in = c;
        float *h_out = h2, *c_out = c2;
        for (int k = 0; k < n; k++) {
#pragma omp single
            {
                id = draw(logits, banned, t, noise + (long)k * m->vocab, m->vocab, work);
                if (id < 0) done = k;
                else ids[k] = id;
            } /* (the single's barrier: every thread sees id and done) */
            if (done == k) break;
            step_share(m, id, h_in, c_in, h_out, c_out, logits, xh, me, T);
#pragma omp barrier
            const float *hs = h_in, *cs = c_in;
            h_in = h_out, c_in = c_out, h_out = (float *)hs, c_out = (float *)cs;
        }
    }
    if (done % 2) { /* an odd number of steps left the state in h2, c2 */
        const long state = (long)m->layers * m->hidden;
        for (long i = 0; i < state; i++) h[i] = h2[i], c[i] = c2[i];
    }
    return done;
}
