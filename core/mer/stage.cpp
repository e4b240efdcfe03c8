// STSTNet's full-resolution training stage (core/mer/kernel.py, core/mer/models.py:ConvReluNormPool): for one
// fold's batch, the 16-channel 3x3 convolution, ReLU, the batch-norm sums and the 3x3/3 max-pool in one pass
// over each sample, and the backward (the convolution recomputed) in two; the 16 channels are one vector of
// GCC's vector extension (AVX-512, or two AVX2 registers), and a sample's maps stay in L1/L2.
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

constexpr int OUT = 16;  // the three streams' channels together: one vector
constexpr int TAPS = 9;  // a 3x3 convolution
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
        for (int i = 0; i < out_side; ++i) {
            const int wi = (i + 1) / 3;
            for (int j = 0; j < out_side; ++j) {
                const vec z = conv_at<C>(xs, side, i, j, weights, b);
                const vec h = z > zero ? z : zero;
                hs[i * out_side + j] = h;  // kept for the backward, which then need not recompute it
                s1 += h;
                s2 += h * h;
                const int wj = (j + 1) / 3;
                if (wi < pooled_side && wj < pooled_side) {
                    const size_t k = static_cast<size_t>(wi * pooled_side + wj) * OUT;
                    const vec best = load(pool + k), v = s * h;
                    ivec at;
                    __builtin_memcpy(&at, where + k, sizeof at);
                    const ivec better = v > best;
                    store(pool + k, better ? v : best);
                    at = better ? (ivec{} + (i * out_side + j)) : at;
                    __builtin_memcpy(where + k, &at, sizeof at);
                }
            }
        }
        for (int o = 0; o < OUT; ++o) { sums[o] += s1[o]; squares[o] += s2[o]; }
    }
}

template <int C>
void backward(const float *x, const int64_t *rows, int batch, int side, const float *relu, const float *c0,
              const float *c1, const float *grad, const float *scale, const float *sign, const float *pooled,
              const int32_t *index, int pooled_side, double *dw, double *db, float *work) {
    const int out_side = side - 2, positions = out_side * out_side, windows = pooled_side * pooled_side;
    const vec a0 = load(c0), a1 = load(c1), zero = {};
    vec *dz = reinterpret_cast<vec *>(work);
    vec grad_w[C * TAPS], grad_b = zero;
    for (int t = 0; t < C * TAPS; ++t) grad_w[t] = zero;
    for (int n = 0; n < batch; ++n) {
        const float *xs = x + static_cast<size_t>(rows[n]) * C * side * side;
        const vec *hs = reinterpret_cast<const vec *>(relu) + static_cast<size_t>(n) * positions;
        for (int p = 0; p < positions; ++p) dz[p] = hs[p] > zero ? a1 * hs[p] + a0 : zero;
        const float *g = grad + static_cast<size_t>(n) * OUT * windows;
        const float *best = pooled + static_cast<size_t>(n) * windows * OUT;
        const int32_t *where = index + static_cast<size_t>(n) * windows * OUT;
        for (int k = 0; k < windows; ++k)
            for (int o = 0; o < OUT; ++o)
                if (sign[o] * best[k * OUT + o] > 0.0f)  // the ReLU was on at the chosen element
                    work[static_cast<size_t>(where[k * OUT + o]) * OUT + o] += scale[o] * g[o * windows + k];
        for (int i = 0; i < out_side; ++i) {
            const float *corner = xs + static_cast<size_t>(i) * side;
            for (int j = 0; j < out_side; ++j) {
                const vec d = dz[i * out_side + j];
                grad_b += d;
                for (int c = 0; c < C; ++c)
                    for (int ki = 0; ki < 3; ++ki)
                        for (int kj = 0; kj < 3; ++kj)
                            grad_w[(c * 3 + ki) * 3 + kj] +=
                                d * corner[static_cast<size_t>(c) * side * side + ki * side + j + kj];
            }
        }
        if ((n + 1) % 16 == 0 || n + 1 == batch) {  // into double every 16 samples: float sums stay short
            for (int t = 0; t < C * TAPS; ++t) {
                for (int o = 0; o < OUT; ++o) dw[t * OUT + o] += grad_w[t][o];
                grad_w[t] = zero;
            }
            for (int o = 0; o < OUT; ++o) db[o] += grad_b[o];
            grad_b = zero;
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

// Backward: dz = [h > 0] (c1 h + c0), plus scale * `grad` ([batch][OUT][window], the gradient of the pooled
// maps) at each window's chosen element where h > 0 there (`pooled`, `index`: stage_forward's); the convolution's
// weight and bias gradients added to `dw` ([C * 9][OUT]) and `db`. `work`: (side - 2)^2 * OUT floats.
int stage_backward(const float *x, const int64_t *rows, int batch, int channels, int side, const float *relu,
                   const float *c0, const float *c1, const float *grad, const float *scale, const float *sign,
                   const float *pooled, const int32_t *index, int pooled_side, double *dw, double *db, float *work) {
    auto run = [&](auto instance) {
        instance(x, rows, batch, side, relu, c0, c1, grad, scale, sign, pooled, index, pooled_side, dw, db, work);
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

}  // extern "C"
