# ResBin: the user's verbs. Wiring only: every target calls a stage's CLI (python -m <stage>).
# Variables (override on the command line, e.g. `make sim DATASET=mnist MODEL="B-D128N,PN"`):
DATASET    ?= mnist
MODEL      ?= B-D128N,D88N,D88N,QN,D
RECIPE     ?= strong
EPOCHS     ?=
SEED       ?= 0
BOARD      ?= Pynq-Z2
TARGET_FPS ?=
FOLDING    ?=
CLOCK_MHZ  ?= 100
WIDTHS     ?= 128,88
LIMIT      ?=
SAMPLE     ?=
SWEEP      ?= runs/sweeps/$(DATASET)-$(subst $(comma),-,$(WIDTHS))-$(RECIPE)
RUN        ?=

comma := ,
VENV   ?= .venv
PY     := $(VENV)/bin/python
# written by env/setup.sh, named by the hash of the lock: a changed lock reinstalls
STAMP  := $(VENV)/.resbin-lock-$(shell cat env/requirements.lock env/finn-plus.txt | sha256sum | cut -c1-16)

# Optional flags: passed only when the variable is set.
train_args = --dataset $(DATASET) --model "$(MODEL)" --recipe $(RECIPE) --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS))
hw_args    = --dataset $(DATASET) --model "$(MODEL)" --recipe $(RECIPE) --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS)) \
             --board $(BOARD) --clock-mhz $(CLOCK_MHZ) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) $(if $(FOLDING),--folding $(FOLDING)) \
             $(if $(RUN),--run $(RUN))

.PHONY: help setup test test-all doctor lock data train size variants export estimate codegen sim bitstream \
        deploy validate sweep report pareto bench-accuracy bench-hw bench-sim bench-sweep docker-build clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed -E 's/:.*## /\t/' | expand -t 18

setup: $(STAMP)  ## create .venv with the pinned toolchain (idempotent)
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

train: $(STAMP)  ## train MODEL on DATASET (reuses a finished run; RECIPE=thesis|strong, EPOCHS)
	$(PY) -m train $(train_args)

size: $(STAMP)   ## thesis size and deployed size of MODEL on DATASET
	$(PY) -m train size "$(MODEL)" --dataset $(DATASET)

variants: $(STAMP) ## list the thesis's variants of WIDTHS in thesis order
	$(PY) -m train variants --widths $(WIDTHS)

export: $(STAMP) ## train if needed, then export MODEL to QONNX and check it against PyTorch
	$(PY) -m train $(train_args)
	$(PY) -m export "$$($(PY) -m train $(train_args) --print-run-dir)"

estimate: $(STAMP) ## FINN build up to resource/throughput estimates for BOARD at TARGET_FPS, with fit check
	$(PY) -m hw_build estimate $(hw_args)

codegen: $(STAMP) ## FINN build up to HLS/RTL code generation
	$(PY) -m hw_build codegen $(hw_args)

sim: $(STAMP)    ## main command: train, export, compile and simulate the accelerator on the whole test set
	$(PY) -m hw_build sim $(hw_args)

bitstream: $(STAMP) ## everything up to the bitfile (stops with exit code 3 before IP generation without Vivado)
	$(PY) -m hw_build bitstream $(hw_args)

deploy: $(STAMP) ## assemble the PYNQ board package (bitfile if built, golden model, test set, notebook)
	$(PY) -m deploy.package $(hw_args)

sweep: $(STAMP)  ## train every variant of WIDTHS (LIMIT, SAMPLE), resumable, parallel (Ray)
	$(PY) -m dse sweep --dataset $(DATASET) --widths $(WIDTHS) --recipe $(RECIPE) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	  $(if $(LIMIT),--limit $(LIMIT)) $(if $(SAMPLE),--sample $(SAMPLE)) --board $(BOARD) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) --out $(SWEEP)

report: $(STAMP) ## markdown report with plots of a finished SWEEP
	$(PY) -m dse report $(SWEEP)

pareto: $(STAMP) ## most accurate variant of a SWEEP that fits BOARD at TARGET_FPS
	$(PY) -m dse pareto $(SWEEP) --board $(BOARD) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS))

bench-accuracy: $(STAMP) ## MNIST accuracy of the thesis's baselines and best variants -> docs/results/mnist-accuracy.md
	$(PY) -m train.bench_accuracy --out docs/results/mnist-accuracy.md $(if $(EPOCHS),--epochs $(EPOCHS))

bench-hw: $(STAMP) ## FINN estimates + simulated accuracy of the best variants -> docs/results/mnist-hw.md
	$(PY) -m hw_build bench --out docs/results/mnist-hw.md

bench-sim: $(STAMP) ## images/s of the software accelerator vs FINN and PyTorch -> docs/results/sim-speed.md
	$(PY) -m hw_build.bench_sim --out docs/results/sim-speed.md

bench-sweep: $(STAMP) ## the thesis sweeps (width 128: all 56; 128,88: a sample of 56) -> docs/results/
	$(PY) -m dse bench --out docs/results

docker-build:    ## build the FINN/Vivado toolchain image (Vivado is mounted from the host at run time)
	docker build -f docker/Dockerfile -t resbin:latest .

clean:           ## remove run artifacts (runs/, build/); keeps .venv
	rm -rf runs build
