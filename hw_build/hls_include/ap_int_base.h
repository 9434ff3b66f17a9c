// ResBin shim over the hls4ml wheel's <ap_int_base.h> (the open-source Vivado HLS ap_types):
// Vitis HLS's ap_int_base<W, S> also has `static const bool sign_flag = S`, which
// finn-hlslib's LabelSelect_Batch reads (maxpool.h: static_assert on Out_T::sign_flag). This
// header is found first on the include path; it gives ap_int_base a root type that adds that
// one member, includes the wheel's header, and restores the root type for ap_fixed.
#ifndef RESBIN_AP_INT_BASE_SHIM_H
#define RESBIN_AP_INT_BASE_SHIM_H
#include <ap_common.h>

template <int _AP_W, bool _AP_S>
struct resbin_int_sim : ssdm_int_sim<_AP_W, _AP_S> {
    static const bool sign_flag = _AP_S;
};

#undef _AP_ROOT_TYPE
#define _AP_ROOT_TYPE resbin_int_sim
#include_next <ap_int_base.h>
#undef _AP_ROOT_TYPE
#define _AP_ROOT_TYPE ssdm_int_sim
#endif
