#!/usr/bin/env bash
# doorstep's set-up on a fresh machine is two commands:
#   ./dev.sh demo   simulate a city (or --data/--format to bring yours), ingest, build demand tables
#   ./dev.sh test   lint, type-check and run the test suite
# Both create ./.venv and install the project (with its dev extras) on first use.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DOORSTEP_VENV:-.venv}"
PY="${PYTHON:-python3}"

ensure_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.doorstep-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    ensure_env
    exec doorstep demo "$@"
    ;;
  test)
    ensure_env
    ruff check .
    mypy  # the packages listed in pyproject.toml; the type checker and stubs are pinned there
    exec pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo [--data PATH --format lade|csv|parquet] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
