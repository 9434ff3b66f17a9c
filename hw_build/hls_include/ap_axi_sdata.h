// ResBin stand-in for Vitis HLS's <ap_axi_sdata.h>: finn-hlslib's streamtools.h includes it for
// the QDMA adapters (Qdma2Stream_Batch / Stream2Qdma_Batch), which name qdma_axis<D,0,0,0> and
// its get_data/set_data/set_keep/set_last. No ResBin layer instantiates them; this declares
// the same members with the same meaning so that streamtools.h compiles.
#ifndef RESBIN_AP_AXI_SDATA_H
#define RESBIN_AP_AXI_SDATA_H
#include <ap_int.h>

template <int D, int U, int TI, int TD>
struct qdma_axis {
    ap_uint<D> data;
    ap_uint<(D + 7) / 8> keep;
    ap_uint<1> last;
    ap_uint<D> get_data() const { return data; }
    ap_uint<(D + 7) / 8> get_keep() const { return keep; }
    ap_uint<1> get_last() const { return last; }
    void set_data(ap_uint<D> d) { data = d; }
    void set_keep(ap_uint<(D + 7) / 8> k) { keep = k; }
    void set_last(ap_uint<1> l) { last = l; }
};
#endif
