// ResBin stand-in for Vitis HLS's half-precision type `half` (hls_half.h). g++ >= 12 has the
// IEEE binary16 type _Float16 on x86-64, which is what Vitis's `half` models. finn-plus's
// cnpy.h and finn-hlslib's flatten.hpp/interpret.hpp name `half` (bit images, npy type map);
// ResBin's integer layers never compute with it. Force-included by hw_build.finn_env.
#ifndef RESBIN_HLS_HALF_H
#define RESBIN_HLS_HALF_H
typedef _Float16 half;
#endif
