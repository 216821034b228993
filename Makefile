# The README's two commands. Each is idempotent and works on a machine that has only python3.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xbench-installed
# every distribution under plugins/: the plugins and the libraries they share (xbench-blocks)
PLUGINS := $(sort $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml)))

.PHONY: demo test install lint typecheck bench packages official clean

demo: $(STAMP)  ## install everything, run the built-in default, print the results
	$(VENV)/bin/xbench run

test: $(STAMP)  ## install everything with the test extras, run the core's and every plugin's tests
	$(PY) -m pytest tests $(addsuffix /tests,$(PLUGINS))

install: $(STAMP)

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): $(PY) pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PY) -m pip install -e ".[test,report]" $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check xbench_core tests plugins benchmarks

typecheck: $(STAMP)  ## mypy on the core, every plugin and xbench-blocks
	$(PY) -m mypy xbench_core $(filter-out %.egg-info,$(wildcard plugins/*/xbench_plugin_* plugins/*/xbench_blocks))

packages:  ## CI: build every wheel and sdist, twine check, non-editable install in fresh venvs, the core alone
	.ci/packages

official:  ## CI: ports against official packages that need their own venv (BioViL vs hi-ml-multimodal)
	.ci/official

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
