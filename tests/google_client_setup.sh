#!/usr/bin/env bash
# Installs Google's own Python client libraries (google-auth, google-api-python-client, pinned)
# into the project's venv for tests/google_client_check.py. Idempotent: does nothing when the
# pinned versions are already there. The Sheets v4 discovery document ships inside
# google-api-python-client (static discovery), so nothing else is fetched at run time.
set -euo pipefail
venv="${COLLECT_VENV:-$HOME/.cache/collect/venv}"
google_auth="2.62.2"
api_client="2.202.0"
have() {
  "$venv/bin/python" - "$google_auth" "$api_client" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if (version("google-auth"), version("google-api-python-client")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}
if have; then
  echo "google-auth $google_auth, google-api-python-client $api_client: present ($venv)" >&2
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
fi
echo "google-auth $google_auth, google-api-python-client $api_client: installing into $venv" >&2
PIP_NO_INPUT=1 "$venv/bin/pip" install -q --disable-pip-version-check \
  "google-auth==$google_auth" "google-api-python-client==$api_client"
have
