// ResBin stand-in for Vitis HLS's <hls_vector.h>: the part of hls::vector<T, N> that finn-hlslib
// and finn-plus's npy2vectorstream.hpp use in a g++ C++ simulation: a fixed-size array with
// element access, a splat constructor and an initializer list. (Vitis's class also has
// element-wise arithmetic and reductions; nothing ResBin compiles calls them.)
#ifndef RESBIN_HLS_VECTOR_H
#define RESBIN_HLS_VECTOR_H
#include <array>
#include <cstddef>
#include <initializer_list>

namespace hls {

template <typename T, std::size_t N>
class vector {
    std::array<T, N> data_{};

public:
    vector() = default;
    explicit vector(const T &v) { data_.fill(v); }
    vector(std::initializer_list<T> l) {
        std::size_t i = 0;
        for (const T &v : l) {
            if (i < N) data_[i++] = v;
        }
    }
    T &operator[](std::size_t i) { return data_[i]; }
    const T &operator[](std::size_t i) const { return data_[i]; }
    static constexpr std::size_t size() { return N; }
    T *begin() { return data_.data(); }
    T *end() { return data_.data() + N; }
    const T *begin() const { return data_.data(); }
    const T *end() const { return data_.data() + N; }
    bool operator==(const vector &o) const { return data_ == o.data_; }
    bool operator!=(const vector &o) const { return !(*this == o); }
};

}  // namespace hls
#endif
