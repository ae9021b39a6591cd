# shellcheck shell=bash
# Sourced by scripts/serve, scripts/test and scripts/check: go to the repository root and make sure .venv
# holds the project (editable, with the dev extras). pip runs only when pyproject.toml is newer than the
# stamp, so the usual start costs nothing. Installs no system packages.

cd "$(dirname "${BASH_SOURCE[0]}")/.."

_kv_python=${VENV_PYTHON:-python3}
_kv_stamp=.venv/.installed-stamp

if ! "$_kv_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "kanalväxel needs Python 3.11 or newer as '$_kv_python' (set VENV_PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
  echo "Creating .venv with $_kv_python ..." >&2
  if ! "$_kv_python" -m venv --clear .venv; then
    echo "Could not create .venv. On Debian/Ubuntu install the venv module first: apt-get install python3-venv" >&2
    exit 1
  fi
  rm -f "$_kv_stamp"
fi

if [ ! -e "$_kv_stamp" ] || [ pyproject.toml -nt "$_kv_stamp" ]; then
  echo "Installing kanalväxel and its development tools into .venv ..." >&2
  # Stamp the time before installing: an edit to pyproject.toml during the install triggers another one.
  touch "$_kv_stamp.new"
  .venv/bin/python -m pip install --quiet --editable '.[dev]'
  mv "$_kv_stamp.new" "$_kv_stamp"
fi

unset _kv_python _kv_stamp
