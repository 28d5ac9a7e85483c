#!/usr/bin/env bash
# Serve the lab as a systemd service (the Vagrant VM does this; any Debian 12 machine can).
#
#   scripts/lab-service.sh            install, enable and start labkit-lab.service
#   scripts/lab-service.sh --print    print the unit it would install, change nothing
#
# The service runs `make lab` as root (labkit drives mounts, namespaces and cgroups) with
# IP=0.0.0.0 inside the VM; the Vagrantfile forwards it to the host's 127.0.0.1 only.
# The login token is made once and kept in /etc/labkit/lab.env (JUPYTER_TOKEN).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${LABKIT_VENV:-$repo/.venv}
ip=${LABKIT_IP:-0.0.0.0}
port=${LABKIT_PORT:-8888}
unit=/etc/systemd/system/labkit-lab.service
envfile=/etc/labkit/lab.env

render() {
  cat <<UNIT
[Unit]
Description=labkit: JupyterLab with the container-image lessons (port $port)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=root
WorkingDirectory=$repo
EnvironmentFile=$envfile
Environment=LABKIT_HOME=/var/lib/labkit
ExecStart=/usr/bin/make -C $repo lab VENV=$venv IP=$ip PORT=$port
# labkit's own cleanup runs at interpreter exit; this catches a killed kernel's leftovers
ExecStopPost=-$venv/bin/labkit reset
Restart=on-failure
RestartSec=3

[Install]
WantedBy=multi-user.target
UNIT
}

if [ "${1:-}" = "--print" ]; then
  render
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "lab-service: run as root" >&2
  exit 1
fi
mkdir -p /etc/labkit
if [ ! -s "$envfile" ]; then
  umask 077
  echo "JUPYTER_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$envfile"
fi
render > "$unit"
systemctl daemon-reload
systemctl enable --now labkit-lab.service
systemctl restart labkit-lab.service
. "$envfile"
echo "lab-service: JupyterLab is served; open http://127.0.0.1:$port/lab?token=$JUPYTER_TOKEN"
