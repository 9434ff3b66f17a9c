// Generic AXI-stream testbench for one FINN RTL layer verilated as class `Vtop`
// (hw_build/rtlsim.py writes rtlsim_ports.h with the layer's port names and builds this file).
//
// usage: harness TIMEOUT FRAMES OUT_BEATS... IN_FILE... OUT_FILE... FRAME_END_FILE
//   IN_FILE:  the beats of input stream i, each as ceil(width/32) little-endian uint32 words
//   OUT_FILE: the beats collected on output stream o, same layout (OUT_BEATS[o] of them)
//   FRAME_END_FILE: FRAMES uint64 cycle numbers, the cycle in which each frame's last beat left
//                   output stream 0 (cycle 0 = the first cycle after reset)
// Every input stream is offered a beat in every cycle while it has data (TVALID stays high, as
// FINN's rtlsim drives it); every output is always ready. Exit 0 when all outputs have been
// collected, 3 when no output beat appeared for TIMEOUT cycles, 4 when the outputs were all out
// but some input was never taken (within TIMEOUT more cycles), 2 on bad arguments / files.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include "verilated.h"
#include "Vtop.h"
#include "rtlsim_ports.h"  // RTLSIM_INPUTS(X), RTLSIM_OUTPUTS(X), RTLSIM_AXILITE(X), clock, reset

// Verilator represents a port of <=8/16/32/64 bits as C/S/I/QData and a wider one as VlWide.
template <typename T> static constexpr int words_of(const T&) { return sizeof(T) > 4 ? 2 : 1; }
template <std::size_t N> static constexpr int words_of(const VlWide<N>&) { return N; }
template <typename T> static void put(T& port, const uint32_t* w) {
    uint64_t v = w[0];
    if (sizeof(T) > 4) v |= uint64_t(w[1]) << 32;
    port = T(v);
}
template <std::size_t N> static void put(VlWide<N>& port, const uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) port[i] = w[i];
}
template <typename T> static void get(const T& port, uint32_t* w) {
    uint64_t v = port;
    w[0] = uint32_t(v);
    if (sizeof(T) > 4) w[1] = uint32_t(v >> 32);
}
template <std::size_t N> static void get(const VlWide<N>& port, uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) w[i] = port[i];
}

struct Stream {
    const char* name;
    CData* valid;
    CData* ready;
    int words;
    std::function<void(const uint32_t*)> put_data;  // inputs
    std::function<void(uint32_t*)> get_data;        // outputs
    std::vector<uint32_t> data;
    uint64_t beats = 0, pos = 0;
};

static bool read_file(const char* path, std::vector<uint32_t>& out) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    std::fseek(f, 0, SEEK_END);
    long n = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    out.resize(n / 4);
    bool ok = std::fread(out.data(), 4, out.size(), f) == out.size();
    std::fclose(f);
    return ok;
}

static bool write_file(const char* path, const void* data, size_t bytes) {
    FILE* f = std::fopen(path, "wb");
    if (!f) return false;
    bool ok = std::fwrite(data, 1, bytes, f) == bytes;
    return std::fclose(f) == 0 && ok;
}

int main(int argc, char** argv) {
    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vtop>(ctx.get());
    std::vector<Stream> ins, outs;
#define RTLSIM_IN(p) ins.push_back(Stream{#p, &top->p##_TVALID, &top->p##_TREADY, \
    words_of(top->p##_TDATA), [&](const uint32_t* w) { put(top->p##_TDATA, w); }, nullptr});
#define RTLSIM_OUT(p) outs.push_back(Stream{#p, &top->p##_TVALID, &top->p##_TREADY, \
    words_of(top->p##_TDATA), nullptr, [&](uint32_t* w) { get(top->p##_TDATA, w); }});
    RTLSIM_INPUTS(RTLSIM_IN)
    RTLSIM_OUTPUTS(RTLSIM_OUT)
    const int nin = ins.size(), nout = outs.size();
    if (argc != 4 + 2 * nout + nin) {
        std::fprintf(stderr, "usage: %s TIMEOUT FRAMES OUT_BEATS*%d IN*%d OUT*%d FRAME_ENDS\n",
                     argv[0], nout, nin, nout);
        return 2;
    }
    const uint64_t timeout = std::strtoull(argv[1], nullptr, 10);
    const uint64_t frames = std::strtoull(argv[2], nullptr, 10);
    for (int o = 0; o < nout; ++o) {
        outs[o].beats = std::strtoull(argv[3 + o], nullptr, 10);
        outs[o].data.resize(outs[o].beats * outs[o].words);
    }
    for (int i = 0; i < nin; ++i) {
        if (!read_file(argv[3 + nout + i], ins[i].data)) {
            std::fprintf(stderr, "cannot read %s\n", argv[3 + nout + i]);
            return 2;
        }
        ins[i].beats = ins[i].data.size() / ins[i].words;
    }
    if (frames == 0 || outs[0].beats % frames) {
        std::fprintf(stderr, "output beats %llu not a multiple of %llu frames\n",
                     (unsigned long long)outs[0].beats, (unsigned long long)frames);
        return 2;
    }
    const uint64_t beats_per_frame = outs[0].beats / frames;
    std::vector<uint64_t> frame_end(frames, 0);

    // idle AXI-lite (no register access), then 16 cycles of reset as FINN's rtlsim does
    RTLSIM_AXILITE(RTLSIM_TIE_AXILITE)
    top->RTLSIM_CLK = 0;
    top->RTLSIM_RST = 0;
    for (int c = 0; c < 16; ++c) {
        top->RTLSIM_CLK = 0; top->eval();
        top->RTLSIM_CLK = 1; top->eval();
    }
    top->RTLSIM_RST = 1;

    uint64_t cycle = 0, idle = 0;
    auto done = [&] {
        for (auto& s : outs) if (s.pos < s.beats) return false;
        return true;
    };
    auto consumed = [&] {
        for (auto& s : ins) if (s.pos < s.beats) return false;
        return true;
    };
    // run until every output beat is out, then on until every input beat is taken
    while (!done() || (!consumed() && idle <= timeout)) {
        for (auto& s : ins) {
            *s.valid = s.pos < s.beats;
            if (*s.valid) s.put_data(&s.data[s.pos * s.words]);
        }
        for (auto& s : outs) *s.ready = 1;
        top->RTLSIM_CLK = 0;
        top->eval();
        // handshakes are sampled before the rising edge that completes them
        std::vector<bool> in_fire(nin);
        for (int i = 0; i < nin; ++i) in_fire[i] = *ins[i].valid && *ins[i].ready;
        bool any_out = false;
        for (int o = 0; o < nout; ++o) {
            Stream& s = outs[o];
            if (*s.valid && s.pos < s.beats) {
                s.get_data(&s.data[s.pos * s.words]);
                ++s.pos;
                any_out = true;
                if (o == 0 && s.pos % beats_per_frame == 0) frame_end[s.pos / beats_per_frame - 1] = cycle;
            }
        }
        top->RTLSIM_CLK = 1;
        top->eval();
        for (int i = 0; i < nin; ++i) ins[i].pos += in_fire[i];
        ++cycle;
        idle = any_out ? 0 : idle + 1;
        if (idle > timeout && !done()) {
            std::fprintf(stderr, "timeout: no output beat for %llu cycles (cycle %llu, %s: %llu of %llu beats)\n",
                         (unsigned long long)timeout, (unsigned long long)cycle, outs[0].name,
                         (unsigned long long)outs[0].pos, (unsigned long long)outs[0].beats);
            return 3;
        }
    }
    top->final();
    if (!consumed()) {
        std::fprintf(stderr, "all %llu output beats were out, but %s took only %llu of %llu input beats\n",
                     (unsigned long long)outs[0].beats, ins[0].name,
                     (unsigned long long)ins[0].pos, (unsigned long long)ins[0].beats);
        return 4;
    }
    for (int o = 0; o < nout; ++o)
        if (!write_file(argv[3 + nout + nin + o], outs[o].data.data(), outs[o].data.size() * 4)) return 2;
    if (!write_file(argv[3 + 2 * nout + nin], frame_end.data(), frames * 8)) return 2;
    return 0;
}
