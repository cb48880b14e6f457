# derma-jepa: every target creates the virtual environment it needs when it is missing.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
# Where `make demo` writes its run directory.
DEMO_DIR ?= runs/demo

.PHONY: venv demo paper audit exp009 notebooks check-notebooks docs test check-clean nbtest pytest sync bench-data bench-embed bench-fit bench-arc bench-cold-run bench-pretrain bench-cluster clean-venv

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
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill --log-level WARNING nbs/run.ipynb $(DEMO_DIR).ipynb \
	  -f nbs/experiments/demo.yaml -p run_dir $(DEMO_DIR)
	@mv $(DEMO_DIR).ipynb $(DEMO_DIR)/run.ipynb
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
	ISIC_NONHAM_DIR=$(ISIC_NONHAM_DIR) PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill --log-level WARNING \
	  nbs/exp009.ipynb $(RUNS_DIR)/exp009/exp009.ipynb -p runs_dir $(RUNS_DIR) -p executor $(EXECUTOR) $(EXP009_ARGS)
	@echo "executed notebook: $(RUNS_DIR)/exp009/exp009.ipynb; tables and figures: paper/exp009/"

## Every notebook in nbs/ executed in place and stamped (18_notebooks): the numbered ones on the real copy where they
## use data (HAM10000_DIR, ISIC_NONHAM_DIR), run.ipynb as EXP-004 under `symmetric`, paper.ipynb by `make paper`,
## exp009.ipynb by `make exp009`. Finished runs and cached embeddings are reused; NB_WORKERS notebooks at a time.
## It starts with `make sync`, so an edited .py reaches its .ipynb before the .ipynb is re-executed (and rewritten).
## The numbered notebooks run in nbs/, so the data paths are made absolute for them.
NB_WORKERS ?= 2
# NOTEBOOKS= (empty) skips the numbered notebooks, e.g. to redo only the papermill ones
NOTEBOOKS ?= nbs/[0-9]*.ipynb
NB := $(PY) -c "from derma_jepa.notebooks import main; main()"
# The notebooks and tests make temporary folders (05_backbones writes ~1 GB of hub-layout checkpoints): each target
# that runs them gets one scratch TMPDIR of its own, removed when the recipe line ends, pass or fail, so repeated test
# runs leave nothing behind in /tmp.
SCRATCH = scratch=$$(mktemp -d -t derma-jepa-XXXXXX) && trap 'rm -rf "$$scratch"' EXIT && export TMPDIR=$$scratch &&
# what 18_notebooks.execution_env gives a kernel, for the three papermill notebooks too (but not nbs/matplotlibrc:
# they run from the checkout's root, as `make paper` and `make exp009` always do, so paper/ is the same bytes either way)
NB_ENV := TQDM_DISABLE=1 PYTHONWARNINGS="ignore:IProgress not found"
notebooks: sync
	@test -n "$$HAM10000_DIR" || { echo "make notebooks: set HAM10000_DIR (the committed notebooks show the real copy)"; exit 2; }
	$(SCRATCH) printf "%s\n" $(NOTEBOOKS) | HAM10000_DIR=$(abspath $(HAM10000_DIR)) ISIC_NONHAM_DIR=$(abspath $(ISIC_NONHAM_DIR)) \
	  PATH=$(abspath $(BIN)):$$PATH xargs -r -P $(NB_WORKERS) -n 1 $(NB) execute
	@mkdir -p $(RUNS_DIR)/notebooks
	$(SCRATCH) $(NB_ENV) PATH=$(abspath $(BIN)):$$PATH $(BIN)/papermill --log-level WARNING \
	  nbs/run.ipynb $(RUNS_DIR)/notebooks/run.ipynb -f nbs/experiments/exp004.yaml \
	  -p protocol symmetric -p backbone color_texture -p run_dir $(RUNS_DIR)/notebooks/exp004-symmetric
	$(NB) adopt $(RUNS_DIR)/notebooks/run.ipynb nbs/run.ipynb
	$(SCRATCH) $(NB_ENV) $(MAKE) --no-print-directory paper BACKBONES=color_texture
	$(NB) adopt $(RUNS_DIR)/paper.ipynb nbs/paper.ipynb
	$(SCRATCH) $(NB_ENV) $(MAKE) --no-print-directory exp009 EXP009_ARGS="-p compare color_texture"
	$(NB) adopt $(RUNS_DIR)/exp009/exp009.ipynb nbs/exp009.ipynb
	$(BIN)/nbdev_clean && $(BIN)/jupytext --sync nbs/*.ipynb >/dev/null && $(NB) check

## The documentation site (19_docs), built offline from the committed notebooks, README.md and paper/ into _docs/.
docs: $(STAMP)
	$(PY) -c "from derma_jepa.docs import main; main()"

# Committed outputs present, stamped and current (18_notebooks).
check-notebooks: $(STAMP)
	@$(NB) check

## The test command: notebooks and package in sync, outputs current, then nbdev_test, then pytest.
test: check-clean check-notebooks nbtest pytest

# nbdev_export and nbdev_clean must leave the tree exactly as it was.
check-clean: $(STAMP)
	@before=$$(git status --porcelain; git diff); \
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean && \
	after=$$(git status --porcelain; git diff); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev_export / nbdev_clean changed files: notebooks and derma_jepa/ are out of sync:"; \
	  diff <(echo "$$before") <(echo "$$after") | grep '^>' | head -20; exit 1; \
	fi; echo "nbdev_export / nbdev_clean: no diff"

nbtest: $(STAMP)
	$(SCRATCH) PATH=$(abspath $(BIN)):$$PATH $(BIN)/nbdev_test --n_workers 2 --timing

pytest: $(STAMP)
	$(SCRATCH) PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -q tests

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

bench-pretrain: $(STAMP)
	ISIC_NONHAM_DIR=$(ISIC_NONHAM_DIR) $(PY) benchmarks/bench_pretrain.py

clean-venv:
	rm -rf $(VENV)
