#!/usr/bin/env bash
# Installs Twilio's Python helper library (pinned) into the project's Python venv, for
# tests/twilio_client_check.py. Idempotent and non-interactive: a venv that already has this
# version is left as it is.
#   tests/twilio_client_setup.sh        # venv at ${COLLECT_VENV:-$HOME/.cache/collect/venv}
set -euo pipefail
version=9.13.0
venv="${COLLECT_VENV:-$HOME/.cache/collect/venv}"
log() { printf 'twilio_client_setup: %s\n' "$*" >&2; }

if [ -x "$venv/bin/python" ] &&
  [ "$("$venv/bin/python" -c 'import twilio; print(twilio.__version__)' 2>/dev/null)" = "$version" ]; then
  log "twilio $version: present ($venv)"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
log "twilio $version: installing into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-input "twilio==$version"
"$venv/bin/python" -c 'import twilio; print("twilio", twilio.__version__)' >&2
