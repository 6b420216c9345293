// Fused StudentConv for CPU (see projects/cone_geometry/student_kernel.py, which builds and calls it).
//
//   out[b, o, p] = sum_c relu( bias[c, o] + sum_k X_k[b, c, p] * W[c, o, k] )
//
// where X_k[b, c, p] is input channel c under kernel tap k at output pixel p (an im2col "unfold" with the
// module's stride, padding and dilation; zero outside the image).  The n_in x n_out x H x W intermediate of the
// grouped convolution is never stored: per image, the unfolded input (n_in x K x P, a few hundred KB) is built
// in a thread-local buffer and the ReLU'd partial sums live in vector registers.
//
// Forward and the input gradient vectorize over output pixels; the weight and bias gradients vectorize over
// output filters o (so that their sums over pixels need no horizontal reductions).  The backward recomputes the
// pre-activation z; nothing but the input is saved between forward and backward.
//
// No torch headers: plain C ABI on raw contiguous buffers (loaded with ctypes), std::thread over images.
// GCC/Clang vector extensions; the vector width follows the target (64 bytes with AVX-512, else 32).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int VBYTES = 64;
#else
constexpr int VBYTES = 32;
#endif
// Filters per forward block: 16 accumulators (measured best on AVX2 too, where the taps come from L1 instead).
#ifndef FWD_OB
#define FWD_OB 16
#endif

template <typename T>
struct Vec {
    typedef T type __attribute__((vector_size(VBYTES)));
    typedef T unaligned __attribute__((vector_size(VBYTES), aligned(alignof(T)), may_alias));
    static constexpr int N = VBYTES / sizeof(T);
};

template <typename T>
inline typename Vec<T>::type loadu(const T* p) {
    return *reinterpret_cast<const typename Vec<T>::unaligned*>(p);
}

template <typename T>
inline void storeu(T* p, typename Vec<T>::type v) {
    *reinterpret_cast<typename Vec<T>::unaligned*>(p) = v;
}

template <typename T>
inline typename Vec<T>::type splat(T s) {
    typename Vec<T>::type v;
    _Pragma("GCC unroll 16") for (int i = 0; i < Vec<T>::N; ++i) v[i] = s;
    return v;
}

// max(z, 0), as vmaxps / vmaxpd where available (same result as the select, NaN -> 0 included)
template <typename T>
inline typename Vec<T>::type relu(typename Vec<T>::type z) {
    const typename Vec<T>::type zero = {};
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) return (typename Vec<T>::type)_mm512_max_ps((__m512)z, (__m512)zero);
    else return (typename Vec<T>::type)_mm512_max_pd((__m512d)z, (__m512d)zero);
#elif defined(__AVX__)
    if constexpr (sizeof(T) == 4) return (typename Vec<T>::type)_mm256_max_ps((__m256)z, (__m256)zero);
    else return (typename Vec<T>::type)_mm256_max_pd((__m256d)z, (__m256d)zero);
#else
    return z > zero ? z : zero;
#endif
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

struct Geom {
    int64_t B, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
    int64_t K() const { return kh * kw; }
    int64_t P() const { return Ho * Wo; }
};

// Run f(b) for b in [0, n) on up to `threads` threads (contiguous chunks; f must be thread-safe per b).
template <typename F>
void parallel_chunks(int64_t n, int threads, F f) {
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, n));
    if (threads == 1) {
        f(0, n, 0);
        return;
    }
    std::vector<std::thread> pool;
    int64_t per = (n + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
        int64_t lo = t * per, hi = std::min(n, lo + per);
        if (lo >= hi) break;
        pool.emplace_back([=] { f(lo, hi, t); });
    }
    for (auto& th : pool) th.join();
}

// buf[c][k][0..Pp) = X_k[c, p] for one image x[C][H][W]; zero outside the image and for p >= P.
template <typename T>
void unfold(const T* x, T* buf, const Geom& g, int64_t Pp) {
    const int64_t K = g.K();
    std::fill(buf, buf + g.C * K * Pp, T(0));
    for (int64_t c = 0; c < g.C; ++c) {
        const T* xc = x + c * g.H * g.W;
        for (int64_t m = 0; m < g.kh; ++m)
            for (int64_t n = 0; n < g.kw; ++n) {
                T* row = buf + (c * K + m * g.kw + n) * Pp;
                for (int64_t i = 0; i < g.Ho; ++i) {
                    int64_t y = i * g.sh + m * g.dh - g.ph;
                    if (y < 0 || y >= g.H) continue;
                    const T* xr = xc + y * g.W;
                    T* r = row + i * g.Wo;
                    for (int64_t j = 0; j < g.Wo; ++j) {
                        int64_t xx = j * g.sw + n * g.dw - g.pw;
                        if (xx >= 0 && xx < g.W) r[j] = xr[xx];
                    }
                }
            }
    }
}

// gx[C][H][W] += fold(dbuf[c][k][p]) (the adjoint of unfold).
template <typename T>
void fold_add(const T* dbuf, T* gx, const Geom& g, int64_t Pp) {
    const int64_t K = g.K();
    for (int64_t c = 0; c < g.C; ++c) {
        T* gc = gx + c * g.H * g.W;
        for (int64_t m = 0; m < g.kh; ++m)
            for (int64_t n = 0; n < g.kw; ++n) {
                const T* row = dbuf + (c * K + m * g.kw + n) * Pp;
                for (int64_t i = 0; i < g.Ho; ++i) {
                    int64_t y = i * g.sh + m * g.dh - g.ph;
                    if (y < 0 || y >= g.H) continue;
                    T* gr = gc + y * g.W;
                    const T* r = row + i * g.Wo;
                    for (int64_t j = 0; j < g.Wo; ++j) {
                        int64_t xx = j * g.sw + n * g.dw - g.pw;
                        if (xx >= 0 && xx < g.W) gr[xx] += r[j];
                    }
                }
            }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: for each pixel tile (one vector) and block of OB filters, accumulate over input channels.
// wpad[c][Op][K], bpad[c][Op] are zero-padded to Op filters (a multiple of FWD_OB).

template <typename T, int K, int OB>
inline void fwd_block(const T* buf, const T* wpad, const T* bpad, T* out, const Geom& g, int64_t Pp, int64_t Op,
                      int64_t p0, int64_t o0) {
    typedef typename Vec<T>::type V;
    constexpr int N = Vec<T>::N;
    V acc[OB];
    _Pragma("GCC unroll 32") for (int j = 0; j < OB; ++j) acc[j] = V{};
    for (int64_t c = 0; c < g.C; ++c) {
        V xk[K];
        const T* bc = buf + c * K * Pp + p0;
        _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) xk[k] = loadu<T>(bc + k * Pp);
        const T* wc = wpad + (c * Op + o0) * K;
        const T* bb = bpad + c * Op + o0;
        _Pragma("GCC unroll 32") for (int j = 0; j < OB; ++j) {
            V z = splat<T>(bb[j]);
            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) z += xk[k] * wc[j * K + k];
            acc[j] += relu<T>(z);
        }
    }
    const int64_t P = g.P();
    const int64_t lanes = std::min<int64_t>(N, P - p0);
    _Pragma("GCC unroll 32") for (int j = 0; j < OB; ++j) {
        if (o0 + j >= g.O) break;
        T tmp[N];
        storeu<T>(tmp, acc[j]);
        std::memcpy(out + (o0 + j) * P + p0, tmp, lanes * sizeof(T));
    }
}

template <typename T, int K>
void forward_k(const T* x, const T* w, const T* bias, T* out, const Geom& g, int threads) {
    constexpr int N = Vec<T>::N;
    const int64_t P = g.P(), Pp = round_up(P, N), Op = round_up(g.O, FWD_OB);
    std::vector<T> wpad(g.C * Op * K, T(0)), bpad(g.C * Op, T(0));
    for (int64_t c = 0; c < g.C; ++c)
        for (int64_t o = 0; o < g.O; ++o) {
            bpad[c * Op + o] = bias[c * g.O + o];
            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) wpad[(c * Op + o) * K + k] = w[(c * g.O + o) * K + k];
        }
    parallel_chunks(g.B, threads, [&](int64_t lo, int64_t hi, int) {
        std::vector<T> buf(g.C * K * Pp);
        for (int64_t b = lo; b < hi; ++b) {
            unfold<T>(x + b * g.C * g.H * g.W, buf.data(), g, Pp);
            T* ob = out + b * g.O * P;
            for (int64_t p0 = 0; p0 < P; p0 += N) {
                for (int64_t o0 = 0; o0 < Op; o0 += FWD_OB)
                    fwd_block<T, K, FWD_OB>(buf.data(), wpad.data(), bpad.data(), ob, g, Pp, Op, p0, o0);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Backward (taps and weights read from L1 as memory operands; the K gradient accumulators stay in registers).
//  (A) input: dX_k[c, p] = sum_o W[c,o,k] * gout[o,p] * 1[z > 0], vectors over p, then folded back (col2im);
//  (B) weight/bias: dW[c,o,k] = sum_{b,p} gout[o,p] 1[z>0] X_k[c,p], dbias[c,o] = sum_{b,p} gout[o,p] 1[z>0],
//      vectors over o (filters padded to Oq, a multiple of the vector width), scalars X_k[c,p] broadcast.

template <typename T, int K>
void backward_k(const T* x, const T* w, const T* bias, const T* gout, T* gx, T* gw, T* gb, const Geom& g,
                int threads) {
    typedef typename Vec<T>::type V;
    constexpr int N = Vec<T>::N;
    const int64_t P = g.P(), Pp = round_up(P, N), Oq = round_up(g.O, N);
    const bool need_x = gx != nullptr, need_w = gw != nullptr || gb != nullptr;
    // transposed, padded parameters for (B): wT[c][k][Oq], bT[c][Oq]
    std::vector<T> wT(g.C * K * Oq, T(0)), bT(g.C * Oq, T(0));
    for (int64_t c = 0; c < g.C; ++c)
        for (int64_t o = 0; o < g.O; ++o) {
            bT[c * Oq + o] = bias[c * g.O + o];
            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) wT[(c * K + k) * Oq + o] = w[(c * g.O + o) * K + k];
        }
    int nt = (int)std::max<int64_t>(1, std::min<int64_t>(threads, g.B));
    // per-thread accumulators for (B): dwT[c][k][Oq], dbT[c][Oq]
    std::vector<std::vector<T>> dwT(need_w ? nt : 0), dbT(need_w ? nt : 0);
    parallel_chunks(g.B, nt, [&](int64_t lo, int64_t hi, int t) {
        std::vector<T> buf(g.C * K * Pp), dbuf(need_x ? g.C * K * Pp : 0), gT(need_w ? Pp * Oq : 0);
        std::vector<T>* dw = need_w ? &dwT[t] : nullptr;
        std::vector<T>* db = need_w ? &dbT[t] : nullptr;
        if (need_w) {
            dw->assign(g.C * K * Oq, T(0));
            db->assign(g.C * Oq, T(0));
        }
        std::vector<T> gpad(need_x ? g.O * Pp : 0, T(0));
        for (int64_t b = lo; b < hi; ++b) {
            unfold<T>(x + b * g.C * g.H * g.W, buf.data(), g, Pp);
            const T* go = gout + b * g.O * P;
            if (need_x) {
                for (int64_t o = 0; o < g.O; ++o) std::memcpy(&gpad[o * Pp], go + o * P, P * sizeof(T));
                for (int64_t p0 = 0; p0 < Pp; p0 += N)
                    for (int64_t c = 0; c < g.C; ++c) {
                        V dx[K];
                        const T* bc = buf.data() + c * K * Pp + p0;
                        _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) dx[k] = V{};
                        const T* wc = w + c * g.O * K;
                        const T* bb = bias + c * g.O;
                        for (int64_t o = 0; o < g.O; ++o) {
                            V z = splat<T>(bb[o]);
                            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) z += loadu<T>(bc + k * Pp) * wc[o * K + k];
                            const V zero = {};
                            V gv = z > zero ? loadu<T>(&gpad[o * Pp + p0]) : zero;
                            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) dx[k] += gv * wc[o * K + k];
                        }
                        T* dc = dbuf.data() + c * K * Pp + p0;
                        _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) storeu<T>(dc + k * Pp, dx[k]);
                    }
                fold_add<T>(dbuf.data(), gx + b * g.C * g.H * g.W, g, Pp);
            }
            if (need_w) {
                for (int64_t p = 0; p < P; ++p)
                    for (int64_t o = 0; o < g.O; ++o) gT[p * Oq + o] = go[o * P + p];
                for (int64_t c = 0; c < g.C; ++c) {
                    const T* bc = buf.data() + c * K * Pp;
                    for (int64_t o0 = 0; o0 < Oq; o0 += N) {
                        V dwk[K];
                        _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) dwk[k] = V{};
                        const T* wk = &wT[c * K * Oq + o0];
                        const V bv = loadu<T>(&bT[c * Oq + o0]);
                        V dbv = {};
                        for (int64_t p = 0; p < P; ++p) {
                            V z = bv;
                            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) z += loadu<T>(wk + k * Oq) * bc[k * Pp + p];
                            const V zero = {};
                            V gv = z > zero ? loadu<T>(&gT[p * Oq + o0]) : zero;
                            dbv += gv;
                            _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) dwk[k] += gv * bc[k * Pp + p];
                        }
                        _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) {
                            T* d = &(*dw)[(c * K + k) * Oq + o0];
                            storeu<T>(d, loadu<T>(d) + dwk[k]);
                        }
                        T* d = &(*db)[c * Oq + o0];
                        storeu<T>(d, loadu<T>(d) + dbv);
                    }
                }
            }
        }
    });
    if (need_w) {
        for (int t = 1; t < (int)dwT.size(); ++t) {
            if (dwT[t].empty()) continue;
            for (size_t i = 0; i < dwT[0].size(); ++i) dwT[0][i] += dwT[t][i];
            for (size_t i = 0; i < dbT[0].size(); ++i) dbT[0][i] += dbT[t][i];
        }
        for (int64_t c = 0; c < g.C; ++c)
            for (int64_t o = 0; o < g.O; ++o) {
                if (gb) gb[c * g.O + o] = dbT[0][c * Oq + o];
                if (gw)
                    _Pragma("GCC unroll 32") for (int k = 0; k < K; ++k) gw[(c * g.O + o) * K + k] = dwT[0][(c * K + k) * Oq + o];
            }
    }
}

// Dispatch on the number of kernel taps (compile-time K keeps the taps in registers).
#define STUDENT_CONV_KS(X) X(1) X(4) X(9) X(25)

template <typename T>
int forward_any(const T* x, const T* w, const T* b, T* out, const Geom& g, int threads) {
    switch (g.K()) {
#define CASE(k) case k: forward_k<T, k>(x, w, b, out, g, threads); return 0;
        STUDENT_CONV_KS(CASE)
#undef CASE
    }
    return 1;
}

template <typename T>
int backward_any(const T* x, const T* w, const T* b, const T* go, T* gx, T* gw, T* gb, const Geom& g,
                 int threads) {
    switch (g.K()) {
#define CASE(k) case k: backward_k<T, k>(x, w, b, go, gx, gw, gb, g, threads); return 0;
        STUDENT_CONV_KS(CASE)
#undef CASE
    }
    return 1;
}

Geom geom(const int64_t* s) {
    return Geom{s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14]};
}

}  // namespace

// shape: B, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo.  All buffers contiguous; gx must be zeroed;
// gx / gw / gb may be null when not needed.  Returns 0, or 1 for an unsupported kernel size.
extern "C" {

int student_conv_supported_taps(int k) {
    switch (k) {
#define CASE(kk) case kk: return 1;
        STUDENT_CONV_KS(CASE)
#undef CASE
    }
    return 0;
}

int student_conv_vector_bytes() { return VBYTES; }

int student_conv_forward_f32(const float* x, const float* w, const float* b, float* out, const int64_t* shape,
                             int threads) {
    return forward_any<float>(x, w, b, out, geom(shape), threads);
}

int student_conv_forward_f64(const double* x, const double* w, const double* b, double* out,
                             const int64_t* shape, int threads) {
    return forward_any<double>(x, w, b, out, geom(shape), threads);
}

int student_conv_backward_f32(const float* x, const float* w, const float* b, const float* go, float* gx,
                              float* gw, float* gb, const int64_t* shape, int threads) {
    return backward_any<float>(x, w, b, go, gx, gw, gb, geom(shape), threads);
}

int student_conv_backward_f64(const double* x, const double* w, const double* b, const double* go, double* gx,
                              double* gw, double* gb, const int64_t* shape, int threads) {
    return backward_any<double>(x, w, b, go, gx, gw, gb, geom(shape), threads);
}
}
