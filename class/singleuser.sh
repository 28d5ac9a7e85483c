#!/usr/bin/env bash
# What DockerSpawner runs in each student's container (class/jupyterhub_config.py), after the lab
# image's entry point (scripts/container-entry.sh) has checked that the container may mount and
# that the lab root and /work are volumes, and has reset what a previous container left.
# The student's own copies of the lessons go to /work, as `make lab` does; JupyterHub passes the
# server's URL, port and token in JUPYTERHUB_* variables. The copies have no outputs, so Jupyter
# opens them trusted with no signing step (tests/test_packaging.py).
set -euo pipefail
labkit notebook sync >/dev/null
exec jupyterhub-singleuser --allow-root --ServerApp.root_dir="$LABKIT_WORKDIR" "$@"
