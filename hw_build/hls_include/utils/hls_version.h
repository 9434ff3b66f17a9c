// ResBin stand-in for Vitis HLS's <utils/hls_version.h>: the release the g++ cppsim build
// claims to be. finn-hlslib's utils.hpp reads XILINX_HLS_VERSION_RELEASE: >= 20242 includes
// ap_float.h, < 20252 declares std::numeric_limits<ap_(u)int<W>>. The hls4ml ap_types are the
// open-source Vivado HLS headers, which have neither, so claim 2022.2 (finn-plus's oldest).
#ifndef RESBIN_HLS_VERSION_H
#define RESBIN_HLS_VERSION_H
#define XILINX_HLS_VERSION_MAJOR 2022
#define XILINX_HLS_VERSION_MINOR 2
#define XILINX_HLS_VERSION_RELEASE 20222
#endif
