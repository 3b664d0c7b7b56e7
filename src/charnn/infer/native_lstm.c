/* One character of a charnn LSTM, one stream, float32: the step behind `--backend native`.
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
 * Built by charnn.infer.native with the machine's C compiler; without OpenMP it runs on one
 * thread. Each row's sum is the same whatever the number of threads.
 */
#ifdef _OPENMP
#include <omp.h>
#endif
#include <math.h>

typedef struct {
    int layers, hidden, vocab;
    const float *table, *w0, *w, *b, *wh, *bh;
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

static inline float dot(const float *restrict a, const float *restrict x, int n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < n; k++) s += a[k] * x[k];
    return s;
}

static inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

/* One unit range [lo, hi) of layer l: gates, cell and hidden state. */
static void layer_units(const charnn_lstm *m, int l, int id, const float *x, const float *c_in,
                        float *h_out, float *c_out, int lo, int hi) {
    const int H = m->hidden;
    for (int j = lo; j < hi; j++) {
        float g[4];
        if (l == 0) {
            dot4(m->w0 + (long)j * H, (long)H * H, x, H, g);
            const float *t = m->table + (long)id * 4 * H + j;
            for (int q = 0; q < 4; q++) g[q] += t[(long)q * H];
        } else {
            const long rows = 4L * H * 2 * H;
            dot4(m->w + (l - 1) * rows + (long)j * 2 * H, (long)H * 2 * H, x, 2 * H, g);
            const float *bias = m->b + (long)(l - 1) * 4 * H + j;
            for (int q = 0; q < 4; q++) g[q] += bias[(long)q * H];
        }
        const float c = sigmoid(g[1]) * c_in[j] + sigmoid(g[0]) * tanhf(g[2]);
        c_out[j] = c;
        h_out[j] = sigmoid(g[3]) * tanhf(c);
    }
}

/* h_in, c_in, h_out, c_out: layers x H; logits: vocab; xh: 2H of scratch. */
void charnn_lstm_step(const charnn_lstm *m, int id, const float *h_in, const float *c_in,
                      float *h_out, float *c_out, float *logits, float *xh, int threads) {
    const int H = m->hidden, L = m->layers, V = m->vocab;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        int T = 1, t = 0;
#ifdef _OPENMP
        T = omp_get_num_threads(), t = omp_get_thread_num();
#endif
        const int lo = H * t / T, hi = H * (t + 1) / T;
        for (int l = 0; l < L; l++) {
            const float *x = l == 0 ? h_in : xh;
            layer_units(m, l, id, x, c_in + (long)l * H, h_out + (long)l * H, c_out + (long)l * H,
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
        for (int v = V * t / T; v < V * (t + 1) / T; v++) logits[v] = m->bh[v] + dot(m->wh + (long)v * H, h, H);
    }
}
