#!/usr/bin/env bash
# Runs the whole test suite (SQLite and the local PostgreSQL), after installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# shellcheck disable=SC1091
source scripts/test-postgres.sh
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-2}" "$@"
code=$?
set -e
if (( code == 5 )); then
  echo "test.sh: pytest collected no test" >&2
  exit 1
fi
exit $code
