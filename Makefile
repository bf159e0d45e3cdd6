# Set-up and entry points. `make demo` and `make test` create .venv, install
# requirements.txt and make sure Fashion-MNIST is there before they run.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test data bench clean-runs

$(STAMP): requirements.txt
	@if [ ! -x $(PY) ]; then \
	  $(PYTHON) -m venv $(VENV) || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -q && apt-get install -y -q python3-venv && \
	      rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	    else \
	      echo "Could not create $(VENV); install your distribution's python3-venv package." >&2; \
	      exit 1; \
	    fi; }; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# Installs the Debian package with the real Fashion-MNIST IDX files when it
# is missing and this is a root shell with apt; otherwise the data is read
# from --data_dir or downloaded by tensorflow-datasets.
data:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	  else \
	    echo "Note: $(FASHION_MNIST) is missing and this is not a root shell with apt;" \
	         "Fashion-MNIST will come from --data_dir or tensorflow-datasets (online)." >&2; \
	  fi; \
	fi

demo: $(STAMP) data
	$(PY) -m inc_tf.main --flagfile=configs/demo_fashion_mnist_mlp.cfg

test: $(STAMP) data
	$(PY) -m pytest -q tests

bench: $(STAMP) data
	$(PY) bench/train_step.py
	$(PY) bench/metric_pass.py
	$(PY) bench/measurement_passes.py
	$(PY) bench/host_linalg.py

clean-runs:
	rm -rf runs
