#!/usr/bin/env bash
# Load benchmark: skygate's authenticated GET /v1/models over TLS 1.3 keep-alive, beside a bare
# hyper+rustls hello-world (same TLS config and certificate) measured in the same run with the same
# client. Loopback only; each run is bounded by -d. Needs wrk (apt-get install wrk).
# Usage: [ROUNDS=3] [BASE_BIN=path/to/older/skygate] scripts/load.sh [DURATION_SECONDS] [CONNECTIONS]
# BASE_BIN also measures another skygate build (say, the last commit's) in the same rounds, limits on.
# Each server is measured ROUNDS times, interleaved; the medians are compared. Every line also gives
# the server process's CPU time per request (user + system, from /proc), which depends less than
# req/s on how the two cores are shared between wrk and the server.
# FLOOD=1 also measures what floods cost: invalid keys and unknown routes answered per second, and the
# valid traffic served while a flood of invalid keys runs beside it (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-10}"; conns="${2:-32}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p skygate --bin skygate
cargo build --release -q -p skygate-server --example bare_tls
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/skygate"
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
data="$tmp/data"
# Limits stay on (every request is checked) but high enough not to refuse the load.
mkdir -p "$data"
printf '[limits.tiers.free]\nrequests_per_minute = 10000000\npredictions_per_minute = 1000000\n' >"$data/skygate.toml"
acct=$($bin --data-dir "$data" accounts create --email load@example.com 2>/dev/null | tail -1)
proj=$($bin --data-dir "$data" projects create --account "$acct" --name load 2>/dev/null | tail -1)
key=$($bin --data-dir "$data" keys create --project "$proj" 2>/dev/null | tail -1)

source scripts/common.sh
SKYGATE_LOG=warn $bin serve --data-dir "$data" --listen 127.0.0.1:0 >"$tmp/sg.out" 2>"$tmp/sg.err" &
sg_pid=$!; sg=$(wait_url "$tmp/sg.out")
# The same server with rate limits off, for the limits on/off ratio.
SKYGATE_LIMITS__ENABLED=false SKYGATE_LOG=warn $bin serve --data-dir "$data" --listen 127.0.0.1:0 >"$tmp/off.out" 2>"$tmp/off.err" &
off_pid=$!; off=$(wait_url "$tmp/off.out")
"$target_dir/release/examples/bare_tls" "$data" >"$tmp/bare.out" 2>&1 &
bare_pid=$!; bare=$(wait_url "$tmp/bare.out")
if [[ -n "${BASE_BIN:-}" ]]; then
  SKYGATE_LOG=warn "$BASE_BIN" serve --data-dir "$data" --listen 127.0.0.1:0 >"$tmp/base.out" 2>"$tmp/base.err" &
  base_pid=$!; base=$(wait_url "$tmp/base.out")
fi
# The same-bytes baseline answers with skygate's own /v1/models body and headers.
curl -sf --cacert "$data/tls/ca.pem" -H "x-api-key: $key" "$sg/v1/models" >"$tmp/models.json"
"$target_dir/release/examples/bare_tls" "$data" "$tmp/models.json" >"$tmp/same.out" 2>&1 &
same_pid=$!; same=$(wait_url "$tmp/same.out")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system time of a process, in clock ticks
tick_us=$((1000000 / $(getconf CLK_TCK)))
run() { # name pid url [header]: prints the req/s; reports the server's CPU time per request on stderr
  local out before after
  before=$(cpu_ticks "$2")
  if [[ $# -gt 3 ]]; then out=$(wrk -t1 -c"$conns" -d"${dur}s" -H "$4" "$3"); else out=$(wrk -t1 -c"$conns" -d"${dur}s" "$3"); fi
  after=$(cpu_ticks "$2")
  local rps; rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  local total; total=$(awk '/requests in/ {print $1}' <<<"$out")
  local lat; lat=$(awk '/Latency/ {print $2; exit}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  local cpu_us; cpu_us=$(awk -v t="$(( (after - before) * tick_us ))" -v n="$total" 'BEGIN {printf "%.2f", t / n}')
  echo "$1: ${rps} req/s, mean latency ${lat}, non-2xx ${non2xx:-0}, server CPU ${cpu_us} us/request" >&2
  echo "$rps"
}
# Warm up, then measure each ROUNDS times (default 3), interleaved, and report the median of each.
rounds="${ROUNDS:-3}"
for u in "$bare/" "$same/"; do wrk -t1 -c"$conns" -d2s "$u" >/dev/null; done
wrk -t1 -c"$conns" -d2s -H "x-api-key: $key" "$sg/v1/models" >/dev/null
wrk -t1 -c"$conns" -d2s -H "x-api-key: $key" "$off/v1/models" >/dev/null
b=(); m=(); s=(); o=(); p=()
for _ in $(seq 1 "$rounds"); do
  b+=("$(run "bare hello" "$bare_pid" "$bare/")")
  m+=("$(run "bare same-bytes" "$same_pid" "$same/")")
  s+=("$(run skygate "$sg_pid" "$sg/v1/models" "x-api-key: $key")")
  o+=("$(run "skygate, limits off" "$off_pid" "$off/v1/models" "x-api-key: $key")")
  if [[ -n "${BASE_BIN:-}" ]]; then p+=("$(run "skygate, BASE_BIN" "$base_pid" "$base/v1/models" "x-api-key: $key")"); fi
done
python3 - "${b[*]}" "${m[*]}" "${s[*]}" "${o[*]}" "${p[*]:-}" <<'PY'
import statistics, sys
b, m, s, o = (statistics.median(map(float, a.split())) for a in sys.argv[1:5])
print(f"medians of {len(sys.argv[1].split())} rounds: bare hello {b:.0f} req/s; bare same-bytes {m:.0f} req/s; skygate GET /v1/models {s:.0f} req/s (limits off: {o:.0f})")
print(f"ratio vs bare hello: {s / b:.2f}; ratio vs bare same-bytes: {s / m:.2f}; limits on vs off: {s / o:.2f}")
if sys.argv[5]:
    p = statistics.median(map(float, sys.argv[5].split()))
    print(f"BASE_BIN: {p:.0f} req/s = {p / b:.2f} of bare hello, {p / m:.2f} of same-bytes; this build / BASE_BIN: {s / p:.2f}")
PY

[[ "${FLOOD:-0}" == 1 ]] || exit 0
# Floods, against a server whose failed-authentication budget is raised out of the way (all traffic here
# comes from 127.0.0.1, so the real budget would turn the flood, and the valid traffic with it, into
# 429s at once): this measures the raw cost of refusing, not the throttle.
flood_data="$tmp/flood"; cp -a "$data" "$flood_data"
printf '[limits]\nauth_failures_per_minute = 100000\n[limits.tiers.free]\nrequests_per_minute = 10000000\npredictions_per_minute = 1000000\n' >"$flood_data/skygate.toml"
SKYGATE_LOG=warn $bin serve --data-dir "$flood_data" --listen 127.0.0.1:0 >"$tmp/fl.out" 2>"$tmp/fl.err" &
fl_pid=$!; fl=$(wait_url "$tmp/fl.out")
bad="x-api-key: sk_live_$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 38)"
wrk -t1 -c"$conns" -d2s -H "x-api-key: $key" "$fl/v1/models" >/dev/null
v=$(run "valid key" "$fl_pid" "$fl/v1/models" "x-api-key: $key")
i=$(run "invalid key (checksum)" "$fl_pid" "$fl/v1/models" "$bad")
u=$(run "unknown route" "$fl_pid" "$fl/no/such/route")
half=$((conns / 2))
wrk -t1 -c"$half" -d"${dur}s" -H "$bad" "$fl/v1/models" >"$tmp/flood.txt" &
fp=$!
together=$(wrk -t1 -c"$half" -d"${dur}s" -H "x-api-key: $key" "$fl/v1/models" | awk '/Requests\/sec/ {print $2}')
wait "$fp"
flood=$(awk '/Requests\/sec/ {print $2}' "$tmp/flood.txt")
python3 - "$v" "$i" "$u" "$together" "$flood" <<'PY'
import sys
v, i, u, t, f = map(float, sys.argv[1:])
print(f"alone: valid {v:.0f} req/s, invalid key {i:.0f} req/s ({i / v:.2f}x), unknown route {u:.0f} req/s ({u / v:.2f}x)")
print(f"side by side (half the connections each): valid {t:.0f} req/s = {t / v:.2f} of alone, flood {f:.0f} req/s")
PY
