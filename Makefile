# Every target creates (once) its own venv in .venv: torch's CPU wheel first, cython before fastbpe (which only
# builds without build isolation on Python 3.11), then the project in editable mode with its dev extra.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xlmtrain-installed

.PHONY: install demo test test-slow test-all clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q cython
	$(BIN)/python -m pip install -q --no-build-isolation fastbpe==0.1.0
	$(BIN)/python -m pip install -q -e '.[dev,slurm,zh,th]'
	touch $(STAMP)

install: $(STAMP)

# The main job: TLM pretraining on the bundled synthetic languages, exported to runs/tlm/model/.
demo: $(STAMP)
	$(BIN)/python -m xlmtrain +recipe=tlm

# The default test suite (slow tests excluded; see `make test-all`).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q -p no:cacheprovider

# The slow tests alone: real subprocess kills, DDP, a one-machine SLURM (apt-installed by the fixture),
# longer training runs (~10 min on 2 cores). CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
