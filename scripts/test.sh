#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. every Rust test in the workspace (unit, store conformance on SQLite and — when
#      SKYGATE_TEST_DATABASE_URL is set — PostgreSQL, end-to-end tests of the real binary over TLS);
#   2. the interop tests in tests/interop with real peers (the official Skytells Python SDK) in a venv,
#      which also provides moto's S3 server for the object-store tests of step 1.
# A test whose component is missing prints "SKIPPED <test>: <why>", unless SKYGATE_TEST_REQUIRE_ALL=1,
# which turns every such skip into a failure (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

require_all() { [[ -n "${SKYGATE_TEST_REQUIRE_ALL:-}" && "${SKYGATE_TEST_REQUIRE_ALL}" != "0" ]]; }

echo "== test peers (a venv from tests/interop/requirements.txt, reused while it is unchanged)"
venv="${SKYGATE_VENV:-.venv}"
python="${PYTHON:-python3}"
have_venv=1
stamp="$venv/.requirements.sha256"
want="$(sha256sum tests/interop/requirements.txt | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  rm -f "$stamp"
  if ! command -v "$python" >/dev/null 2>&1 \
     || ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt; }; then
    if require_all; then echo "FAILED: could not set up the test venv and SKYGATE_TEST_REQUIRE_ALL is set" >&2; exit 1; fi
    echo "SKIPPED interop peers: could not create a venv with tests/interop/requirements.txt"
    have_venv=0
  else
    echo "$want" > "$stamp"
  fi
fi
if [[ $have_venv == 1 ]]; then
  # The S3 tests start this on a free loopback port (see skygate_testkit::moto).
  export SKYGATE_TEST_MOTO_SERVER="${SKYGATE_TEST_MOTO_SERVER:-$(realpath "$venv")/bin/moto_server}"
fi

echo "== building (one build shared by every stage)"
cargo build --workspace --all-targets --locked

echo "== Rust tests"
cargo test --workspace --locked --no-fail-fast

echo "== interop tests (tests/interop)"
if [[ $have_venv == 0 ]]; then echo "SKIPPED interop tests: no venv"; exit 0; fi
SKYGATE_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/skygate" "$venv/bin/python" -m pytest tests/interop -q -p no:cacheprovider
