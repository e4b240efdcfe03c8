// One STSTNet fold's training step on a CPU (core/mer/kernel.py, core/mer/models.py:FusedFoldStep).
// The stage: for the fold's batch, the 16-channel 3x3 convolution, ReLU, the batch-norm sums and the 3x3/3
// max-pool in one pass over each sample, and its backward in another. The head: batch norm of the pooled maps,
// dropout and the linear layer, forward and backward. The 16 channels are one vector of GCC's vector
// extension (AVX-512, or two AVX2 registers), and a sample's maps stay in L1/L2.
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int OUT = 16;  // the three streams' channels together: one vector
constexpr int TAPS = 9;  // a 3x3 convolution
constexpr int BLOCK = 6;  // conv_block's positions: 6 chains of fused multiply-adds hide their latency
constexpr int FLUSH = 16;  // float sums go into double every FLUSH samples: float sums stay short
typedef float vec __attribute__((vector_size(OUT * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(OUT * sizeof(int32_t))));

inline vec load(const float *p) { vec v; __builtin_memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, vec v) { __builtin_memcpy(p, &v, sizeof v); }

// z at output position (i, j) of one sample `x` ([C][side][side], padded by 2): bias + weights . taps
template <int C>
inline vec conv_at(const float *x, int side, int i, int j, const vec *w, vec bias) {
    vec acc = bias;
    const float *corner = x + static_cast<size_t>(i) * side + j;
    for (int c = 0; c < C; ++c)
        for (int ki = 0; ki < 3; ++ki)
            for (int kj = 0; kj < 3; ++kj)
                acc += w[(c * 3 + ki) * 3 + kj] * corner[static_cast<size_t>(c) * side * side + ki * side + kj];
    return acc;
}


// z at BLOCK neighbouring positions (i, j + p) of one row: the same sums as conv_at, in the same order, with
// BLOCK independent chains of fused multiply-adds in flight instead of one
template <int C, int B>
inline void conv_block(const float *x, int side, int i, int j, const vec *w, vec bias, vec *z) {
    for (int p = 0; p < B; ++p) z[p] = bias;
    const float *corner = x + static_cast<size_t>(i) * side + j;
    for (int c = 0; c < C; ++c)
        for (int ki = 0; ki < 3; ++ki)
            for (int kj = 0; kj < 3; ++kj) {
                const vec wt = w[(c * 3 + ki) * 3 + kj];
                const float *q = corner + static_cast<size_t>(c) * side * side + ki * side + kj;
                for (int p = 0; p < B; ++p) z[p] += wt * q[p];
            }
}

// The pooling window (3x3, stride 3, padding 1) of ReLU-map position (i, j): its offset k * OUT in a sample's
// [window][OUT] maps, or -1 where the pool leaves the position out (a last row or column).
inline long window_of(int i, int j, int pooled_side) {
    const int wi = (i + 1) / 3, wj = (j + 1) / 3;
    return wi < pooled_side && wj < pooled_side ? static_cast<long>(wi * pooled_side + wj) * OUT : -1;
}

template <int C>
void forward(const float *x, const int64_t *rows, int batch, int side, const float *w, const float *bias,
             const float *sign, int pooled_side, double *sums, double *squares, float *pooled, int32_t *index,
             float *relu) {
    const int out_side = side - 2, positions = out_side * out_side, windows = pooled_side * pooled_side;
    vec weights[C * TAPS];
    for (int t = 0; t < C * TAPS; ++t) weights[t] = load(w + t * OUT);
    const vec b = load(bias), s = load(sign), zero = {};
    for (int n = 0; n < batch; ++n) {
        const float *xs = x + static_cast<size_t>(rows[n]) * C * side * side;
        float *pool = pooled + static_cast<size_t>(n) * windows * OUT;
        int32_t *where = index + static_cast<size_t>(n) * windows * OUT;
        for (int k = 0; k < windows * OUT; ++k) { pool[k] = -INFINITY; where[k] = -1; }
        vec *hs = reinterpret_cast<vec *>(relu) + static_cast<size_t>(n) * positions;
        vec s1 = zero, s2 = zero;
        auto visit = [&](int i, int j, vec z) {
            const vec h = z > zero ? z : zero;
            hs[i * out_side + j] = h;  // kept for the backward, which then need not recompute it
            s1 += h;
            s2 += h * h;
            const long k = window_of(i, j, pooled_side);
            if (k >= 0) {
                const vec best = load(pool + k), v = s * h;
                ivec at;
                __builtin_memcpy(&at, where + k, sizeof at);
                const ivec better = v > best;
                store(pool + k, better ? v : best);
                at = better ? (ivec{} + (i * out_side + j)) : at;
                __builtin_memcpy(where + k, &at, sizeof at);
            }
        };
        for (int i = 0; i < out_side; ++i) {
            int j = 0;
            for (; j + BLOCK <= out_side; j += BLOCK) {
                vec z[BLOCK];
                conv_block<C, BLOCK>(xs, side, i, j, weights, b, z);
                for (int p = 0; p < BLOCK; ++p) visit(i, j + p, z[p]);
            }
            for (; j < out_side; ++j) visit(i, j, conv_at<C>(xs, side, i, j, weights, b));
        }
        for (int o = 0; o < OUT; ++o) { sums[o] += s1[o]; squares[o] += s2[o]; }
    }
}

template <int C>
void backward(const float *x, const int64_t *rows, int batch, int side, const float *relu, const float *c0,
              const float *c1, const float *grad, const float *scale, const int32_t *index, int pooled_side, double *dw,
              double *db) {
    const int out_side = side - 2, positions = out_side * out_side, windows = pooled_side * pooled_side;
    const vec a0 = load(c0), a1 = load(c1), s = load(scale), zero = {};
    vec grad_w[C * TAPS], grad_b = zero;
    for (int t = 0; t < C * TAPS; ++t) grad_w[t] = zero;
    for (int n = 0; n < batch; ++n) {
        const float *xs = x + static_cast<size_t>(rows[n]) * C * side * side;
        const vec *hs = reinterpret_cast<const vec *>(relu) + static_cast<size_t>(n) * positions;
        const float *g = grad + static_cast<size_t>(n) * windows * OUT;
        const int32_t *where = index + static_cast<size_t>(n) * windows * OUT;
        for (int i = 0; i < out_side; ++i) {
            const float *corner = xs + static_cast<size_t>(i) * side;
            for (int j = 0; j < out_side; ++j) {
                const int p = i * out_side + j;
                const vec h = hs[p];
                vec d = a1 * h + a0;
                const long k = window_of(i, j, pooled_side);
                if (k >= 0) {  // in a pooling window: where it was chosen, its gradient
                    ivec at;
                    __builtin_memcpy(&at, where + k, sizeof at);
                    d = at == (ivec{} + p) ? d + s * load(g + k) : d;
                }
                d = h > zero ? d : zero;  // the ReLU's gate
                grad_b += d;
                for (int c = 0; c < C; ++c)
                    for (int ki = 0; ki < 3; ++ki)
                        for (int kj = 0; kj < 3; ++kj)
                            grad_w[(c * 3 + ki) * 3 + kj] +=
                                d * corner[static_cast<size_t>(c) * side * side + ki * side + j + kj];
            }
        }
        if ((n + 1) % FLUSH == 0 || n + 1 == batch) {
            for (int t = 0; t < C * TAPS; ++t) {
                for (int o = 0; o < OUT; ++o) dw[t * OUT + o] += grad_w[t][o];
                grad_w[t] = zero;
            }
            for (int o = 0; o < OUT; ++o) db[o] += grad_b[o];
            grad_b = zero;
        }
    }
}


// The head's per-window values of one sample: the batch-normalised pooled maps `norm` ([window][OUT]) and the
// dropped-out output `y` = kept * (weight * norm + bias), where kept is `keep_scale` if the value's dropout draw is
// below `keep_below`, else 0; `draws` ([batch][window][OUT]) null: no dropout, kept 1.
struct Head {
    const float *sign, *mean, *inv_std, *weight, *bias;
    const int32_t *draws;
    int32_t keep_below;
    float keep_scale;
    int windows;

    template <typename Visit>
    void each(const float *pooled, int n, Visit visit) const {
        const vec s = load(sign), inv = load(inv_std), shift = -load(mean) * inv, w = load(weight), b = load(bias);
        const size_t first = static_cast<size_t>(n) * windows;
        for (int k = 0; k < windows; ++k) {
            const vec norm = s * load(pooled + (first + k) * OUT) * inv + shift;  // pooled holds sign * h
            vec kept = vec{} + 1.0f;
            if (draws) {
                ivec draw;
                __builtin_memcpy(&draw, draws + (first + k) * OUT, sizeof draw);
                kept = draw < keep_below ? vec{} + keep_scale : vec{};
            }
            visit(k, norm, kept, kept * (w * norm + b));
        }
    }
};

inline float sum(vec v) {
    float total = 0.0f;
    for (int o = 0; o < OUT; ++o) total += v[o];
    return total;
}

void head_forward_(const Head &head, const float *pooled, int batch, int classes, const float *fc, const float *fc_bias,
                   float *logits, float *work) {
    vec *y = reinterpret_cast<vec *>(work);  // [window]: one sample's y
    const size_t features = static_cast<size_t>(head.windows) * OUT;
    for (int n = 0; n < batch; ++n) {
        head.each(pooled, n, [&](int k, vec, vec, vec out) { y[k] = out; });
        for (int c = 0; c < classes; ++c) {
            vec acc = {};
            for (int k = 0; k < head.windows; ++k) acc += y[k] * load(fc + c * features + k * OUT);
            logits[n * classes + c] = fc_bias[c] + sum(acc);
        }
    }
}

void head_backward_(const Head &head, const float *pooled, int batch, int classes, const float *fc,
                    const float *grad_logits, float *grad, double *grad_fc, double *grad_fc_bias, double *grad_weight,
                    double *grad_bias, float *work) {
    const size_t features = static_cast<size_t>(head.windows) * OUT;
    for (size_t e = 0; e < classes * features; ++e) work[e] = 0.0f;
    for (int n = 0; n < batch; ++n) {
        const float *dl = grad_logits + n * classes;
        vec sum_grad = {}, sum_grad_norm = {};
        head.each(pooled, n, [&](int k, vec norm, vec kept, vec out) {
            vec g = {};
            for (int c = 0; c < classes; ++c) {
                float *fc_acc = work + c * features + k * OUT;
                store(fc_acc, load(fc_acc) + dl[c] * out);
                g += dl[c] * load(fc + c * features + k * OUT);
            }
            g *= kept;  // the gradient of the batch norm's output (after its affine map)
            store(grad + (static_cast<size_t>(n) * head.windows + k) * OUT, g);
            sum_grad += g;
            sum_grad_norm += g * norm;
        });
        for (int o = 0; o < OUT; ++o) { grad_bias[o] += sum_grad[o]; grad_weight[o] += sum_grad_norm[o]; }
        for (int c = 0; c < classes; ++c) grad_fc_bias[c] += dl[c];
        if ((n + 1) % FLUSH == 0 || n + 1 == batch) {
            for (size_t e = 0; e < classes * features; ++e) { grad_fc[e] += work[e]; work[e] = 0.0f; }
        }
    }
}

}  // namespace

extern "C" {

// Forward: per channel the ReLU output's sum and sum of squares (added to `sums`, `squares`), and per pooling
// window ([batch][window][OUT] in `pooled`, `index`) the largest sign * h and its position i * (side - 2) + j
// (the first in row-major order, as PyTorch's max-pool). Sample n is `x`[rows[n]] (`x`: [N][C][side][side], the
// inputs padded by 2); `w`: [C * 9][OUT]. Returns 0, or -1 for a channel count without an instance.
int stage_forward(const float *x, const int64_t *rows, int batch, int channels, int side, const float *w,
                  const float *bias, const float *sign, int pooled_side, double *sums, double *squares, float *pooled,
                  int32_t *index, float *relu) {
    auto run = [&](auto instance) {
        instance(x, rows, batch, side, w, bias, sign, pooled_side, sums, squares, pooled, index, relu);
        return 0;
    };
    switch (channels) {
        case 1: return run(forward<1>);
        case 2: return run(forward<2>);
        case 3: return run(forward<3>);
        case 4: return run(forward<4>);
        default: return -1;
    }
}

// Backward: dz = [h > 0] (c1 h + c0 + scale * `grad` where h is its pooling window's chosen element), `grad`
// ([batch][window][OUT]) the gradient of the pooled maps, `index` stage_forward's; the convolution's weight and
// bias gradients added to `dw` ([C * 9][OUT]) and `db`.
int stage_backward(const float *x, const int64_t *rows, int batch, int channels, int side, const float *relu,
                   const float *c0, const float *c1, const float *grad, const float *scale, const int32_t *index,
                   int pooled_side, double *dw, double *db) {
    auto run = [&](auto instance) {
        instance(x, rows, batch, side, relu, c0, c1, grad, scale, index, pooled_side, dw, db);
        return 0;
    };
    switch (channels) {
        case 1: return run(backward<1>);
        case 2: return run(backward<2>);
        case 3: return run(backward<3>);
        case 4: return run(backward<4>);
        default: return -1;
    }
}

// Head forward: per sample n, window k, channel o (pooled: stage_forward's; `draws` [batch][window][OUT] or null)
// y = kept * (weight * (sign * pooled - mean) * inv_std + bias), kept = [draw < keep_below] * scale (1 without
// draws), and logits[n][c] = fc_bias[c] + fc[c] . y[n] (`fc`: [classes][window * OUT], the maps' channels-last
// order). `work`: windows * OUT floats.
void head_forward(const float *pooled, int batch, int windows, int classes, const float *sign, const float *mean,
                  const float *inv_std, const float *weight, const float *bias, const int32_t *draws, int keep_below,
                  float scale, const float *fc, const float *fc_bias, float *logits, float *work) {
    const Head head{sign, mean, inv_std, weight, bias, draws, keep_below, scale, windows};
    head_forward_(head, pooled, batch, classes, fc, fc_bias, logits, work);
}

// Head backward for `grad_logits` [batch][classes]: `grad` [batch][window][OUT] the gradient of the batch norm's
// output (after its affine map, before dropout: kept * fc^T grad_logits); added to the double sums: `grad_fc`
// [classes][window * OUT], `grad_fc_bias` [classes], the batch norm's `grad_weight` (grad . norm) and
// `grad_bias` [OUT]. `work`: classes * windows * OUT floats.
void head_backward(const float *pooled, int batch, int windows, int classes, const float *sign, const float *mean,
                   const float *inv_std, const float *weight, const float *bias, const int32_t *draws, int keep_below,
                   float scale, const float *fc, const float *grad_logits, float *grad, double *grad_fc,
                   double *grad_fc_bias, double *grad_weight, double *grad_bias, float *work) {
    const Head head{sign, mean, inv_std, weight, bias, draws, keep_below, scale, windows};
    head_backward_(head, pooled, batch, classes, fc, grad_logits, grad, grad_fc, grad_fc_bias, grad_weight, grad_bias,
                   work);
}

}  // extern "C"
