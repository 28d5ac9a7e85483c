# labkit: `make lab` serves the lessons, `make test` checks everything. Run as root.
VENV     ?= .venv
PY       := $(VENV)/bin/python
PORT     ?= 8888
IP       ?= 127.0.0.1
LABKIT_WORKDIR ?= $(CURDIR)/work
export LABKIT_WORKDIR

.PHONY: lab test bench provision provision-test notebooks clean image image-test image-arm64-test vm-test \
	class class-stop class-status class-provision class-test site

# The lab's packages; provision-test adds the test tools (podman, chromium, vagrant, pytest ...).
provision:
	@LABKIT_VENV=$(abspath $(VENV)) scripts/provision.sh

provision-test:
	@LABKIT_VENV=$(abspath $(VENV)) LABKIT_TEST_TOOLS=1 scripts/provision.sh

# Your own copies of the notebooks live in work/ (git ignores it); the originals stay in notebooks/.
lab: provision
	@$(VENV)/bin/labkit notebook sync
	@echo "labkit: JupyterLab on http://$(IP):$(PORT)/ (the URL with the token follows)"
	@PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/jupyter lab --allow-root --no-browser --ip=$(IP) \
		--port=$(PORT) --ServerApp.root_dir=$(LABKIT_WORKDIR)

# Every lesson runs twice in one lab root: in order under nbval (outputs compared, every exercise
# left as its placeholder), then again in reverse order with each exercise's published solution
# put in (tests/lessons_solved.py: every check must say solved), as learners come back to lessons;
# before that second run each lesson is stopped at 60 % of its cells (its kernel killed).
test: provision-test
	$(PY) -m pytest tests notebooks tests/lessons_solved.py \
		--nbval --nbval-sanitize-with tests/nbval-sanitize.cfg \
		--nbval-current-env --nbval-cell-timeout=600 -p no:cacheprovider

bench: provision-test
	$(PY) -m bench

# Lessons are written in notebooks/src/*.py (jupytext percent format, easy to review);
# this turns each into notebooks/NN-name.ipynb and runs it to store its outputs for nbval.
notebooks: provision-test
	@for src in notebooks/src/*.py; do \
		nb=notebooks/$$(basename $$src .py).ipynb; echo "labkit: building $$nb"; \
		$(VENV)/bin/jupytext --quiet --to ipynb --output $$nb $$src || exit 1; \
		home=$$(mktemp -d /tmp/labkit-nb-XXXX); \
		LABKIT_HOME=$$home $(VENV)/bin/jupyter nbconvert --log-level=WARN --to notebook --execute \
			--inplace --ExecutePreprocessor.timeout=600 $$nb || exit 1; \
		LABKIT_HOME=$$home $(VENV)/bin/labkit reset >/dev/null; rm -rf $$home; done

clean:
	$(VENV)/bin/labkit reset

# The lab as a container image (Containerfile), built with podman or docker, whichever is here.
# BASE=... another base image (debian:12 by default); PLATFORM=linux/arm64 for Apple Silicon.
ENGINE ?= $(shell command -v podman || command -v docker)
IMAGE  ?= labkit
BASE   ?= debian:12
image:
	@test -n "$(ENGINE)" || { echo "make image needs podman or docker (apt-get install podman)"; exit 1; }
	$(ENGINE) build -f Containerfile --build-arg BASE=$(BASE) $(if $(PLATFORM),--platform $(PLATFORM)) -t $(IMAGE) .

# Not part of `make test` (about 15 minutes): a Debian 12 base made with debootstrap, the image
# built, run privileged, preflight and every lesson under nbval inside it (e2e/test_image.py).
image-test:
	@LABKIT_VENV=$(abspath $(VENV)) LABKIT_TEST_TOOLS=1 LABKIT_E2E_TOOLS=1 scripts/provision.sh
	$(PY) -m pytest e2e/test_image.py -p no:cacheprovider -v -s

# Not part of `make test` (about 40 minutes): the image built for arm64 (Apple Silicon) here,
# its binaries run by qemu-user-static through binfmt_misc (e2e/test_image_arm64.py).
image-arm64-test:
	@LABKIT_VENV=$(abspath $(VENV)) LABKIT_TEST_TOOLS=1 LABKIT_E2E_TOOLS=1 scripts/provision.sh
	$(PY) -m pytest e2e/test_image_arm64.py -p no:cacheprovider -v -s

# Not part of `make test` (about 45 minutes): the course VM booted with vagrant-libvirt under
# QEMU's software emulation, from a box made with debootstrap (e2e/test_vm.py).
vm-test:
	@LABKIT_VENV=$(abspath $(VENV)) LABKIT_TEST_TOOLS=1 LABKIT_E2E_TOOLS=1 scripts/provision.sh
	$(PY) -m pytest e2e/test_vm.py -p no:cacheprovider -v -s

# A class on one server (class/README.md): JupyterHub here, one privileged lab container per
# student through podman's Docker API (CLASS_ENGINE=docker for a docker daemon). Settings are
# CLASS_* variables (CLASS_PORT=8000, CLASS_MEM=2G, CLASS_CPUS=1, CLASS_IDLE_TIMEOUT=3600 ...).
CLASS_PY := class/.venv/bin/python
# The hub server needs no lab venv of its own: the lab runs in the containers.
class-provision:
	@command -v podman >/dev/null || command -v docker >/dev/null || apt-get install -y -q podman runc
	@command -v npm >/dev/null || apt-get install -y -q npm
	@python3 -c 'import ensurepip' 2>/dev/null || apt-get install -y -q python3-venv
	@test -x $(CLASS_PY) || python3 -m venv class/.venv
	@$(CLASS_PY) -m pip install -q -r class/requirements.txt
	@test -x class/node_modules/.bin/configurable-http-proxy || npm ci --prefix class --silent

class: class-provision
	@$(CLASS_PY) class/classctl.py start

class-status:
	@$(CLASS_PY) class/classctl.py status

# Stops the hub and every student's server, removes the class's containers, volumes (each
# student's /work is first saved to $(CLASS_ROOT)/handin/) and network, and stops the engine.
class-stop:
	@$(CLASS_PY) class/classctl.py stop

# Not part of `make test` (about 15 minutes): three students at once through a real hub
# (e2e/test_class.py), the class's limits, culler and cleanup, and class/z2jh-values.yaml.
class-test: class-provision
	@LABKIT_VENV=$(abspath $(VENV)) LABKIT_TEST_TOOLS=1 LABKIT_E2E_TOOLS=1 scripts/provision.sh
	$(CLASS_PY) -m pip install -q pytest
	$(CLASS_PY) -m pytest e2e/test_class_files.py -p no:cacheprovider -v
	$(PY) -m pytest e2e/test_class.py -p no:cacheprovider -v -s

# The lessons as a static web site with their stored outputs (Jupyter Book 1, in site/.venv),
# in site/_build/html; then every internal link, picture and folded solution is checked.
SITE_PY := site/.venv/bin/python
site:
	@test -x $(SITE_PY) || python3 -m venv site/.venv
	@$(SITE_PY) -m pip install -q -r site/requirements.txt
	@rm -rf site/_build && mkdir -p site/_build/src
	@cp site/_config.yml site/_toc.yml site/intro.md notebooks/*.ipynb site/_build/src/
	@site/.venv/bin/jupyter-book build -W -n --keep-going site/_build/src >site/_build/build.log 2>&1 \
		|| { tail -20 site/_build/build.log; echo "make site: the book did not build (site/_build/build.log)"; exit 1; }
	@mv site/_build/src/_build/html site/_build/html
	@$(SITE_PY) site/check_site.py site/_build/html notebooks
	@echo "make site: the site is in site/_build/html (open index.html, or publish the folder)"
