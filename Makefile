# derma-jepa: every target creates the virtual environment it needs when it is missing.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# Where `make demo` writes its run directory.
DEMO_DIR ?= runs/demo

.PHONY: venv demo paper paper-pdf audit exp009 notebooks check-notebooks docs test test-all check-clean nbtest nbtest-all pytest pytest-all sync bench-change bench-data bench-embed bench-fit bench-arc bench-cold-run bench-pretrain bench-cluster clean-venv

# pyproject.toml is left out: nbdev_export rewrites it (same content, new mtime) on every export.
$(STAMP): settings.ini setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (derma-jepa)" >/dev/null
	@touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: fixture data, offline, one papermill run.
demo: $(STAMP)
	@mkdir -p $(dir $(DEMO_DIR))
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/derma_jepa_run -f nbs/experiments/demo.yaml -p run_dir $(DEMO_DIR)
	@echo "executed notebook: $(DEMO_DIR)/run.ipynb"
	@echo "metrics:           $(DEMO_DIR)/metrics.json (test AUROC with 95% CIs: predictor, controls, baselines)"
	@echo "run directory:     $(DEMO_DIR)/ (model_card.md, scores.parquet, figures/, manifest.parquet, audit.json, ...)"

## The arc and seed sweep whose backbones load here, then paper/ from the run directories.
## BACKBONES=offline adds the offline stand-ins (random_vitb16, color_texture), labelled as such;
## BACKBONES=color_texture (a comma list) picks among them. SWEEP=0 leaves out the seed sweep.
## Needs HAM10000_DIR (the experiment YAMLs read `data: $$HAM10000_DIR`). PAPER_ARGS passes more options.
## EXECUTOR=slurm runs the embedding and the runs as SLURM jobs (README "On a cluster"); ARC picks the arc file
## (nbs/experiments/arc_cluster.yaml carries GPU resources).
BACKBONES ?= hub
SWEEP ?= 1
RUNS_DIR ?= runs
EXECUTOR ?= local
ARC ?=
paper: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/derma_jepa_paper --backbones $(BACKBONES) --runs $(RUNS_DIR) --paper paper \
	  --executor $(EXECUTOR) $(if $(ARC),--arc $(ARC)) $(if $(filter 0,$(SWEEP)),--no-sweep) $(PAPER_ARGS)

## paper/main.pdf from paper/main.tex: Debian's TeX Live + latexmk (.ci/run installs them), built in a scratch copy so that
## paper/ gains only main.pdf; it prints the page count and any undefined reference or overfull box over 10 pt.
paper-pdf: $(STAMP)
	$(PY) -c "import json; from derma_jepa.text import build_pdf; r = build_pdf('paper'); print(json.dumps(r, indent=1))"

## EXP-009's overlap audit: HAM10000 against the pretraining corpus, recorded in paper/audit/.
ISIC_NONHAM_DIR ?= ../shared/data/isic-nonham
audit: $(STAMP)
	$(PY) -c "import os, json; from derma_jepa.audit import run_overlap_audit as a; \
	r = a(os.environ['HAM10000_DIR'], '$(ISIC_NONHAM_DIR)', 'paper/audit'); \
	print(json.dumps({k: v for k, v in r.items() if k not in ('report', 'near_pair_list')}, indent=1))"

## EXP-009 end to end (nbs/exp009.ipynb): audit -> pretrain each objective on the audited corpus -> diagnosis
## probe -> the EXP-004 recipe under both protocols -> paper/exp009/. Needs HAM10000_DIR; EXP009_ARGS passes papermill
## options (e.g. -p objectives mae,ijepa). Resumes: finished pretraining and complete runs are reused.
exp009: $(STAMP)
	@mkdir -p $(RUNS_DIR)/exp009
	ISIC_NONHAM_DIR=$(ISIC_NONHAM_DIR) PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill --engine derma_jepa --log-level WARNING \
	  nbs/exp009.ipynb $(RUNS_DIR)/exp009/exp009.ipynb -p runs_dir $(RUNS_DIR) -p executor $(EXECUTOR) $(EXP009_ARGS)
	@echo "executed notebook: $(RUNS_DIR)/exp009/exp009.ipynb; tables and figures: paper/exp009/"

## The stale notebooks of nbs/ executed in place and stamped (17_notebooks), each named with why it is stale; ALL=1
## executes every one. The numbered ones run on the real copy where they use data (HAM10000_DIR, ISIC_NONHAM_DIR),
## NB_WORKERS at a time; then run.ipynb (EXP-004 under `symmetric`), paper.ipynb (`make paper`) and exp009.ipynb
## (`make exp009`), each through papermill's traced engine and adopted; then the notebooks that read the others (18_docs).
## Finished runs and cached embeddings are reused. It starts with `make sync`, so an edited .py reaches its .ipynb first.
## The numbered notebooks run in nbs/, so the data paths are made absolute for them.
NB_WORKERS ?= 2
# NOTEBOOKS=nbs/07_backbones.ipynb limits it to those notebooks (empty: every notebook of nbs/)
NOTEBOOKS ?=
ALL ?=
NB := $(PY) -c "from derma_jepa.notebooks import main; main()"
# The notebooks and tests make temporary folders (07_backbones writes hub-layout checkpoints): each target that runs
# them gets one scratch TMPDIR of its own, removed when the recipe line ends, pass or fail, so repeated test runs leave
# nothing behind in /tmp.
SCRATCH = scratch=$$(mktemp -d -t derma-jepa-XXXXXX) && trap 'rm -rf "$$scratch"' EXIT && export TMPDIR=$$scratch &&
notebooks: sync
	@test -n "$$HAM10000_DIR" || { echo "make notebooks: set HAM10000_DIR (the committed notebooks show the real copy)"; exit 2; }
	$(SCRATCH) HAM10000_DIR=$(abspath $(HAM10000_DIR)) ISIC_NONHAM_DIR=$(abspath $(ISIC_NONHAM_DIR)) \
	  PATH=$(abspath $(BIN)):$$PATH $(NB) update --workers $(NB_WORKERS) --runs $(RUNS_DIR) $(if $(ALL),--all) $(NOTEBOOKS)
	$(BIN)/nbdev_clean && $(BIN)/jupytext --sync nbs/*.ipynb >/dev/null && $(NB) check

## The documentation site (18_docs), built offline from the committed notebooks, README.md and paper/ into _docs/.
docs: $(STAMP)
	$(PY) -c "from derma_jepa.docs import main; main()"

# Committed outputs present, stamped and current (17_notebooks).
check-notebooks: $(STAMP)
	@$(NB) check

## The test command: notebooks and package in sync, outputs current, nbdev_test (cells marked `#| slow` skipped: their
## outputs are guarded by the stamps and re-made by `make notebooks`), then pytest (two workers, a file per worker).
## `make test-all` runs the slow cells too.
test: check-clean check-notebooks nbtest pytest
test-all: check-clean check-notebooks nbtest-all pytest-all

# nbdev_export and nbdev_clean must leave the tree exactly as it was.
check-clean: $(STAMP)
	@before=$$(git status --porcelain; git diff); \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && \
	after=$$(git status --porcelain; git diff); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export / nbdev_clean changed files: notebooks and derma_jepa/ are out of sync:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^>' | head -20; exit 1; \
	fi; echo "nbdev_export / nbdev_clean: no diff"

# TEST_WORKERS notebooks (nbdev_test) or test files (pytest-xdist) run at once, each with the machine's cores divided
# among them as torch / OpenMP threads: two workers of two threads each on two cores fight over them (measured on the
# 2-core machine: nbdev_test 166 s with 2 threads per worker, 110 s with 1).
TEST_WORKERS ?= 2
TEST_THREADS ?= $(shell n=$$(nproc); t=$$((n / $(TEST_WORKERS))); echo $$((t > 0 ? t : 1)))
THREADS = OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS)
NBTEST = $(SCRATCH) $(THREADS) PATH=$(abspath $(BIN)):$$PATH $(BIN)/nbdev_test --n_workers $(TEST_WORKERS) --timing --do_print
nbtest: $(STAMP)
	@echo "nbdev_test: every numbered notebook, cells flagged $$($(PY) -c "from nbdev.config import get_config as g; print(g().tst_flags)") skipped; $(TEST_WORKERS) at a time, $(TEST_THREADS) thread(s) each"
	$(NBTEST)

nbtest-all: $(STAMP)
	$(NBTEST) --flags slow

PYTEST = $(SCRATCH) $(THREADS) PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -v -rs --durations=10
pytest: $(STAMP)
	$(PYTEST) -m "not slow" tests

pytest-all: $(STAMP)
	$(PYTEST) tests

## After editing a notebook's .py (or .ipynb): pair, clean and export.
sync: $(STAMP)
	$(BIN)/jupytext --sync nbs/*.py nbs/*.ipynb && $(BIN)/nbdev_clean && $(BIN)/nbdev_export

## Benchmarks (need HAM10000_DIR); results go to benchmarks/results.json.
bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py

bench-embed: $(STAMP)
	$(PY) benchmarks/bench_embed.py

bench-fit: $(STAMP)
	$(PY) benchmarks/bench_fit.py

# BENCH_ARC_ARGS e.g. "--backbones color_texture --phases warm,idle --runs runs"
bench-arc: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(PY) benchmarks/bench_arc.py $(BENCH_ARC_ARGS)

bench-cold-run: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(PY) benchmarks/bench_cold_run.py $(BENCH_COLD_ARGS)

## The color_texture arc through a local single-node SLURM (2 one-CPU workers) vs here, from an empty cache.
bench-cluster: $(STAMP)
	$(SCRATCH) $(PY) benchmarks/bench_cluster.py

## What a change costs: the notebooks an edit to each module stales (from the stamps), and `make test` by stage.
bench-change: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(PY) benchmarks/bench_change.py $(BENCH_CHANGE_ARGS)

bench-pretrain: $(STAMP)
	ISIC_NONHAM_DIR=$(ISIC_NONHAM_DIR) $(PY) benchmarks/bench_pretrain.py

clean-venv:
	rm -rf $(VENV)
