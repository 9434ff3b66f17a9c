# ResBin: the user's verbs. Wiring only: every target calls a stage's CLI (python -m <stage>).
# Variables (override on the command line, e.g. `make sim DATASET=mnist MODEL="B-D128N,PN"`):
DATASET    ?= mnist
VAL        ?=
MODEL      ?= B-D128N,D88N,D88N,QN,D
RECIPE     ?=
EPOCHS     ?=
SEED       ?= 0
BOARD      ?= Pynq-Z2
TARGET_FPS ?=
FOLDING    ?=
CLOCK_MHZ  ?=
WIDTHS     ?= 128,88
LIMIT      ?=
SAMPLE     ?=
N          ?=
SWEEP      ?=
RUN        ?=
DIST       ?= dist
RESUME     ?=
FORCE      ?=
REPLACE_RESULTS ?=
# build options the thesis held fixed (default: the model's): train/options.py declares them, and
# a test checks this list against it; each is passed as its flag, e.g. INPUT_BITS -> --input-bits
OPTION_VARS := INPUT_BITS SHORTCUT_BITS ADD_BITS OUTPUT_BITS POOL_WINDOW POOL_MODE
# the default accelerator of the make targets: a 4-bit input quantizer (shortcut, add and output
# stay at the specification's 8 bits); it fits the Pynq-Z2 at 1.02M fps, an 8-bit input does not.
# INPUT_BITS=8 for the thesis's 8-bit input (the Python CLIs' default).
INPUT_BITS ?= 4

# finn-hlslib for make cppsim (environment; default ../shared/deps/finn-hlslib, else the clone
# in ~/.cache/resbin/finn-hlslib that make setup makes when online)
ifdef FINN_HLSLIB
export FINN_HLSLIB
endif

VENV   ?= .venv
PY     := $(VENV)/bin/python
# written by env/setup.sh, named by the hash of the lock: a changed lock reinstalls
STAMP  := $(VENV)/.resbin-lock-$(shell cat env/requirements.lock env/finn-plus.txt | sha256sum | cut -c1-16)

# Optional flags: passed only when the variable is set.
opt_args   = $(foreach v,$(OPTION_VARS),$(if $($(v)),--$(subst _,-,$(shell echo $(v) | tr A-Z a-z)) $($(v))))
model_args = --dataset $(DATASET)$(if $(VAL), --val $(VAL)) --model "$(MODEL)" --seed $(SEED) \
             $(if $(RECIPE),--recipe $(RECIPE)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(opt_args)
train_args = $(model_args) $(if $(RUN),--run-dir $(RUN)) $(if $(RESUME),--resume) $(if $(FORCE),--force)
# hardware targets: hw_build trains (or resumes, or reuses exactly this run) itself, so a model
# the FPGA cannot take is refused before any training
hw_train   = $(model_args) $(if $(RUN),--run $(RUN)) $(if $(FORCE),--force)
hw_args    = --board $(BOARD) $(if $(CLOCK_MHZ),--clock-mhz $(CLOCK_MHZ)) \
             $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) $(if $(FOLDING),--folding $(FOLDING))
# the run folder of DATASET/MODEL/options (or RUN): one folder per data set and model
run_dir    = $(or $(RUN),$(shell $(PY) -m train $(train_args) --print-run-dir))
sweeps     = $(if $(SWEEP),--sweep $(SWEEP),--dataset $(DATASET))

.PHONY: help setup test test-all doctor lock data train size variants export estimate codegen sim cppsim \
        bitstream deploy sweep report pareto search bench-accuracy bench-hw bench-sim bench-cppsim bench-sweep \
        bench-search bench-train bench-design docker-build clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:.*## /\t/' | expand -t 18

setup: $(STAMP)  ## create .venv with the pinned toolchain (idempotent); clones finn-hlslib when online
	@$(PY) -m hw_build.finn_env hlslib --fetch || echo "setup: no finn-hlslib (offline?): set FINN_HLSLIB for make cppsim"
$(STAMP):
	VENV=$(VENV) bash env/setup.sh

test: $(STAMP)   ## run the default test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) ## run every test, the slow ones too
	$(PY) -m pytest -q

doctor: $(STAMP) ## what this machine has (packages, Vivado, Vitis HLS, finn-hlslib, board) and what each absence disables
	$(PY) -m hw_build.doctor

lock: $(STAMP)   ## rewrite env/requirements.lock from the current .venv
	$(PY) -m pip freeze --exclude-editable | grep -v '^finn-plus' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > env/requirements.lock.new
	mv env/requirements.lock.new env/requirements.lock

data: $(STAMP)   ## download and verify DATASET (mnist, cifar10, imdb, reuters)
	$(PY) -m train.data fetch $(DATASET)

train: $(STAMP)  ## train MODEL on DATASET (reuses a finished run; RECIPE=strong|thesis, EPOCHS, option variables; RESUME=1 continues an interrupted run, FORCE=1 retrains)
	$(PY) -m train $(train_args)

size: $(STAMP)   ## thesis size and deployed size of MODEL on DATASET
	$(PY) -m train size "$(MODEL)" --dataset $(DATASET)

variants: $(STAMP) ## list the thesis's variants of WIDTHS in thesis order
	$(PY) -m train variants --widths $(WIDTHS)

export: train     ## export the trained MODEL to QONNX and check it against PyTorch
	$(PY) -m export $(run_dir)

estimate: $(STAMP) ## FINN build up to resource/throughput estimates for BOARD (TARGET_FPS or the fastest that fits), fit check
	$(PY) -m hw_build estimate $(hw_train) $(hw_args)

codegen: $(STAMP) ## FINN build up to HLS/RTL code generation
	$(PY) -m hw_build codegen $(hw_train) $(hw_args)

sim: $(STAMP)     ## main command: train, export, compile and simulate the accelerator on the whole test set
	$(PY) -m hw_build sim $(hw_train) $(hw_args)

cppsim: $(STAMP)  ## codegen, then the generated HLS C++ (g++) and RTL (Verilator) of every layer on the test set (N=first N images), bit-exact vs golden/QONNX
	$(PY) -m hw_build cppsim $(hw_train) $(hw_args) $(if $(N),--n $(N))

bitstream: $(STAMP) ## everything up to the bitfile (without Vivado: stops before IP generation, exit code 3)
	$(PY) -m hw_build bitstream $(hw_train) $(hw_args)

deploy: sim       ## the PYNQ board package of the BOARD/TARGET_FPS/FOLDING build in DIST (REPLACE_RESULTS=1: drop another build's results/)
	$(PY) -m deploy.package --build $(run_dir) --dataset $(DATASET) --out $(DIST) $(hw_args) $(if $(REPLACE_RESULTS),--force)

sweep: $(STAMP)  ## train every variant of WIDTHS (SAMPLE=N of them, LIMIT=N images), resumable, parallel (Ray)
	$(PY) -m dse sweep --dataset $(DATASET) --widths $(WIDTHS) $(if $(RECIPE),--recipe $(RECIPE)) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(SAMPLE),--sample $(SAMPLE)) \
	  --board $(BOARD) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) $(if $(SWEEP),--out $(SWEEP))

report: $(STAMP)  ## markdown report with plots of the sweeps of DATASET (or SWEEP=<folder>)
	$(PY) -m dse report $(sweeps)

pareto: $(STAMP)  ## most accurate swept variant that fits BOARD at TARGET_FPS; prints the `make bitstream` line
	$(PY) -m dse pareto $(sweeps) --board $(BOARD) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) \
	  $(if $(SHORTCUT_BITS),--shortcut-bits $(SHORTCUT_BITS))

search: $(STAMP)  ## board-aware search: input/shortcut bits, pooling, first width -> most accurate design that fits BOARD at TARGET_FPS
	$(PY) -m dse search --dataset $(DATASET) --board $(BOARD) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) $(bench_args) \
	  $(if $(SHORTCUT_BITS),--shortcut-bits $(SHORTCUT_BITS))

bench_args = $(if $(RECIPE),--recipe $(RECIPE)) $(if $(EPOCHS),--epochs $(EPOCHS))

bench-accuracy: $(STAMP) ## MNIST accuracy of the thesis's baselines and best variants (P and Q) -> docs/results/mnist-accuracy.md
	$(PY) -m bench.accuracy $(bench_args) --out docs/results/mnist-accuracy.md

bench-hw: bench-accuracy ## FINN estimates at 1e5/1e6 fps + simulated accuracy of those binary models -> docs/results/mnist-hw.md
	$(PY) -m hw_build bench --runs $$($(PY) -m bench.accuracy $(bench_args) --list-runs binary) \
	  --targets 1e5 1e6 --board $(BOARD) --out docs/results/mnist-hw.md

bench-sim: bench-accuracy ## images/s of the software accelerator vs FINN and PyTorch on 10k MNIST -> docs/results/sim-speed.md
	$(PY) -m hw_build estimate --run $$($(PY) -m bench.accuracy $(bench_args) --list-runs "$(MODEL)") --board $(BOARD)
	$(PY) -m bench.sim --run $$($(PY) -m bench.accuracy $(bench_args) --list-runs "$(MODEL)") \
	  --out docs/results/sim-speed.md

bench-cppsim: $(STAMP) ## the default mnist design and the search's choice through make cppsim on all 10k test images -> docs/results/mnist-cppsim.md
	$(PY) -m bench.cppsim $(bench_args) $(if $(N),--n $(N)) --out docs/results/mnist-cppsim.md

bench-design: sim ## the default accelerator (DATASET/MODEL/option variables) against BNN-PYNQ's LFC and FINN's TFC -> docs/results/mnist-design.md
	$(PY) -m bench.design --design default=$(run_dir) --board $(BOARD) --out docs/results/mnist-design.md

bench-sweep: $(STAMP) ## the thesis sweeps on the whole training set (width 128: all 56; 128,88: all 224; SAMPLE=N, LIMIT=N images), resumable -> docs/results/mnist-sweep/
	$(PY) -m dse bench $(bench_args) $(if $(LIMIT),--limit $(LIMIT)) $(if $(SAMPLE),--sample $(SAMPLE)) --out docs/results/mnist-sweep

bench-search: $(STAMP) ## the MNIST search for the Z2 at 1M fps (widths 64-256, 2/4/8-bit input and shortcut) -> docs/results/mnist-z2-search/
	$(PY) -m dse search --dataset mnist --board Pynq-Z2 --target-fps 1e6 $(bench_args) --report docs/results/mnist-z2-search

bench-train: $(STAMP) ## training steps/s of binary (fast path, Brevitas) vs float at batch 32/128, 1 and 2 threads, every variant kind + one epoch end to end -> docs/results/train-speed.md
	$(PY) -m bench.train_speed --out docs/results/train-speed.md

docker-build:    ## build the FINN/Vivado toolchain image (Vivado is mounted from the host at run time)
	docker build -f docker/Dockerfile -t resbin:latest .

clean:           ## remove run artifacts (runs/, build/); keeps .venv
	rm -rf runs build
