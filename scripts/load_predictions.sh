#!/usr/bin/env bash
# Load benchmark of the predictions API against the real release binary over TLS 1.3 keep-alive:
#   1. creates/s: POST /v1/predictions {"model":"sky-text", …} (committed to the durable queue, 201),
#   2. end-to-end latency of the text model with "await": true (create → worker → terminal → answer),
# with the gateway's own authenticated GET /v1/models measured in the same run as the baseline (same
# server, same client, no database). Runs on SQLite (embedded) and, when DATABASE_URL is given (or
# SKYGATE_TEST_DATABASE_URL is set), on PostgreSQL. Loopback only. Needs wrk (apt-get install wrk).
# Usage: scripts/load_predictions.sh [DURATION_SECONDS] [CONNECTIONS] [DATABASE_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-10}"; conns="${2:-16}"; pg="${3:-${SKYGATE_TEST_DATABASE_URL:-}}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p skygate --bin skygate
bin="${CARGO_TARGET_DIR:-target}/release/skygate"
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT

cat >"$tmp/create.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"sky-text","input":{"prompt":"the quick brown fox","mode":"title"}}'
LUA
cat >"$tmp/await.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"sky-text","input":{"prompt":"the quick brown fox","mode":"title"},"await":true}'
LUA

wait_url() {
  for _ in $(seq 1 400); do
    url=$(grep -o 'https://[0-9.:]*' "$1" | head -1 || true)
    [[ -n "$url" ]] && { echo "$url"; return; }
    sleep 0.05
  done
  echo "server did not start: $(cat "${1%.out}.err")" >&2; exit 1
}

bench() { # label [database_url]
  local label="$1" data="$tmp/data-$1"
  mkdir -p "$data"
  if [[ $# -gt 1 ]]; then printf '[storage]\ndatabase_url = "%s"\n' "$2" >"$data/skygate.toml"; fi
  printf '[queue]\nworkers = 2\n' >>"$data/skygate.toml"
  # Limits stay on (every create is checked) but high enough not to refuse the load.
  printf '[limits.tiers.free]\nrequests_per_minute = 10000000\npredictions_per_minute = 1000000\n' >>"$data/skygate.toml"
  local acct proj key
  acct=$($bin --data-dir "$data" accounts create --email "load-$label-$$@example.com" 2>/dev/null | tail -1)
  proj=$($bin --data-dir "$data" projects create --account "$acct" --name load 2>/dev/null | tail -1)
  key=$($bin --data-dir "$data" keys create --project "$proj" 2>/dev/null | tail -1)
  SKYGATE_LOG=warn $bin serve --data-dir "$data" --listen 127.0.0.1:0 >"$tmp/$label.out" 2>"$tmp/$label.err" &
  local pid=$!
  local url; url=$(wait_url "$tmp/$label.out")
  local h="x-api-key: $key"
  wrk -t1 -c"$conns" -d2s -H "$h" "$url/v1/models" >/dev/null
  local models create await
  models=$(wrk -t1 -c"$conns" -d"${dur}s" -H "$h" "$url/v1/models")
  create=$(wrk -t1 -c"$conns" -d"${dur}s" -H "$h" -s "$tmp/create.lua" "$url/v1/predictions")
  # Let the workers drain the backlog the create stage queued before timing await: wait until a fresh
  # prediction completes within one await.
  for _ in $(seq 1 300); do
    st=$(curl -sf --cacert "$data/tls/ca.pem" -H "$h" -H 'content-type: application/json' \
      -d '{"model":"echo","input":{"prompt":"x"},"await":true}' "$url/v1/predictions" | grep -o '"status":"[a-z]*"' | head -1)
    [[ "$st" == '"status":"succeeded"' ]] && break
  done
  await=$(wrk -t1 -c4 -d"${dur}s" --latency -H "$h" -s "$tmp/await.lua" "$url/v1/predictions")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$label" "$models" "$create" "$await" <<'PY'
import re, sys
label, models, create, wait = sys.argv[1:]
def rps(s): return float(re.search(r"Requests/sec:\s+([\d.]+)", s).group(1))
def non2xx(s):
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", s); return int(m.group(1)) if m else 0
def pct(s, p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", s, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
print(f"[{label}] GET /v1/models (baseline): {rps(models):.0f} req/s, non-2xx {non2xx(models)}")
print(f"[{label}] POST /v1/predictions (create): {rps(create):.0f} predictions/s, non-2xx {non2xx(create)}; "
      f"ratio to baseline {rps(create) / rps(models):.3f}")
print(f"[{label}] await:true sky-text, 4 connections: {rps(wait):.0f} predictions/s end to end, "
      f"latency p50 {pct(wait, 50):.2f} ms, p90 {pct(wait, 90):.2f} ms, p99 {pct(wait, 99):.2f} ms, non-2xx {non2xx(wait)}")
PY
}

bench sqlite
if [[ -n "$pg" ]]; then
  schema="load_$$"
  psql "$pg" -qc "CREATE SCHEMA $schema" >/dev/null
  sep='?'; [[ "$pg" == *\?* ]] && sep='&'
  bench postgres "${pg}${sep}options[search_path]=${schema}"
  PGOPTIONS="-c client_min_messages=warning" psql "$pg" -qc "DROP SCHEMA $schema CASCADE" >/dev/null
fi
