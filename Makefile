# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo reproduce test bench install install-dev clean

# The toolkit and its run-time dependencies: what demo, reproduce and bench need.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(STAMP)

# On top: the test tools and the optional text encoders the tests exercise (transformers,
# all-MiniLM-L6-v2): ~25 s more of install that the demo does not use.
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# The seed papers' findings on the synthetic val split (~40 min on 2 CPU cores; see docs/reproducing.md).
reproduce: $(STAMP)
	$(PY) tools/reproduce.py

# Two pytest calls: everything but the slurm group in 2 processes, then the slurm group (a real
# single-node SLURM, tests/slurm/cluster.py) alone in one; it skips, loudly, without slurm-wlm + munge.
test: $(DEV_STAMP)
	$(PY) -m pytest -q -n 2 -m "not slurm" tests
	$(PY) -m pytest -q -m slurm tests/slurm

# Every benchmark prints its figures and, on its last line, ratio=<float>.
bench: $(STAMP)
	@mkdir -p outputs/bench; for b in benchmarks/bench_*.py; do \
		log=outputs/bench/$$(basename $$b .py).log; echo "== $$b (log: $$log)"; \
		$(PY) $$b > $$log 2>&1; rc=$$?; tail -n 5 $$log; [ $$rc -eq 0 ] || exit $$rc; \
	done

clean:
	rm -rf $(VENV) outputs
