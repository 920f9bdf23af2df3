#!/usr/bin/env bash
# Load benchmark of the real-model routes through the real binary over TLS 1.3 (loopback only):
#   1. time to first token (TTFT) of a streamed chat completion: with the account's warm sandbox, and
#      with a fresh one (a new account: a sandbox started and the model mapped from the page cache);
#   2. decode speed through the API: tokens/s of one long stream, from its first to its last token;
#   3. fairness: account B's TTFT while account A runs STREAMS concurrent long streams, against B's
#      idle TTFT (the target: at most 3x);
#   4. memory of the warm engine sandboxes after step 1 (one per account, each having answered a
#      chat completion), just after their requests and again once idle (an engine gives back its KV
#      cache after 5 s without a request): each model process's RSS, its anonymous part (what a
#      further tenant adds: the weights are a shared, read-only file mapping) and its PSS (the shared
#      file split between the processes that map it).
# Every figure is the median of ROUNDS tries. TTFT is the time from starting curl (a new TLS 1.3
# connection each time) to the first SSE line: the role chunk, written once the engine has processed
# the prompt and made the first token. (curl's own time_starttransfer is not used: for a POST it
# marks the start of the upload.)
# Needs the test models (scripts/models.sh) and curl; builds the binary in PROFILE (release by
# default; PROFILE=debug measures a debug gateway, whose engine is still llama.cpp built in Release).
# Usage: [ROUNDS=5] [STREAMS=8] [PROFILE=release] scripts/load_inference.sh [MODELS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-5}"; streams="${STREAMS:-8}"; profile="${PROFILE:-release}"
models="${1:-${SKYGATE_TEST_MODELS:-target/test-models/models}}"
[[ -f "$models/SmolLM2-135M-Instruct.Q4_1.gguf" ]] || { echo "no test models in $models (run scripts/models.sh)" >&2; exit 1; }
if [[ "$profile" == release ]]; then cargo build --release -q -p skygate --bin skygate; else cargo build -q -p skygate --bin skygate; fi
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$(realpath "$target_dir/$profile/skygate")"
# The sandbox's unprivileged users must reach the data dir (with the models) and the binary.
tmp=$(mktemp -d /var/tmp/skygate-load.XXXXXX); chmod 755 "$tmp"
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
data="$tmp/data"; mkdir -p "$data/models"
cp -r "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$data/models/smol.gguf"
chmod -R a+rX "$data"
cat >"$data/skygate.toml" <<EOF
[limits.tiers.free]
requests_per_minute = 100000
predictions_per_minute = 100000
concurrent_predictions = 100
tokens_per_minute = 100000000
[models.smol]
backend = "llm"
threads = 2
EOF
new_key() { # email -> a live key of a new account
  local acct proj
  acct=$("$bin" --data-dir "$data" accounts create --email "$1" 2>/dev/null | tail -1)
  proj=$("$bin" --data-dir "$data" projects create --account "$acct" --name load 2>/dev/null | tail -1)
  "$bin" --data-dir "$data" keys create --project "$proj" 2>/dev/null | tail -1
}
key_a=$(new_key a@example.com); key_b=$(new_key b@example.com)

source scripts/common.sh
SKYGATE_LOG=warn "$bin" serve --data-dir "$data" --listen 127.0.0.1:0 >"$tmp/sg.out" 2>"$tmp/sg.err" &
url=$(wait_url "$tmp/sg.out")
ca="$data/tls/ca.pem"

body() { # max_tokens content
  printf '{"model":"smol","stream":true,"max_tokens":%s,"temperature":0,"messages":[{"role":"user","content":"%s"}]}' "$1" "$2"
}
# The TTFT request's messages are the engine bench's (crates/inference/benches/engines.rs), so the two
# TTFTs process the same prompt tokens.
ttft_body='{"model":"smol","stream":true,"max_tokens":1,"temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a short story about a lighthouse keeper."}]}'
ttft() { # key -> seconds from starting the request (a new TLS connection) to the first SSE line
  local t0=$EPOCHREALTIME t1
  t1=$(curl -fsS -N --cacert "$ca" -H "authorization: Bearer $1" -H 'content-type: application/json' \
    -d "$ttft_body" "$url/v1/chat/completions" |
    { IFS= read -r _ || true; echo "$EPOCHREALTIME"; cat >/dev/null; })
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f\n", b - a}'
}
connect() { # seconds for the same kind of curl call answered without a model: a new TLS connection and GET /healthz
  local t0=$EPOCHREALTIME t1
  t1=$(curl -fsS --cacert "$ca" "$url/healthz" | { IFS= read -r _ || true; echo "$EPOCHREALTIME"; cat >/dev/null; })
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.6f\n", b - a}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
decode() { # key -> tokens/s between the first and the last content chunk of a 256-token stream
  curl -fsS -N --cacert "$ca" -H "authorization: Bearer $1" -H 'content-type: application/json' \
    -d "$(body 256 'Tell me a long story about a lighthouse keeper.')" "$url/v1/chat/completions" |
    while IFS= read -r line; do if [[ "$line" == data:* && "$line" == *'"content"'* ]]; then echo "$EPOCHREALTIME"; fi; done |
    awk 'NR == 1 {first = $1} {last = $1; n++} END {if (n > 1) printf "%.1f\n", (n - 1) / (last - first)}'
}

base=$(for _ in $(seq "$rounds"); do connect; done | median)
ttft "$key_a" >/dev/null # A's sandbox warm
warm=$(for _ in $(seq "$rounds"); do ttft "$key_a"; done | median)
fresh=$(for i in $(seq "$rounds"); do ttft "$(new_key "fresh$i@example.com")"; done | median)
memory() { # the model processes of the warm engine sandboxes: "rss anon file pss" in kB, one line each
  local pid
  for pid in $(pgrep -f -- '__sandbox inner .*"engine"'); do
    awk '/^VmRSS|^RssAnon|^RssFile/ {v[$1] = $2} END {printf "%s %s %s ", v["VmRSS:"], v["RssAnon:"], v["RssFile:"]}' "/proc/$pid/status"
    awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup"
  done
}
mem=$(memory)
sleep 6 # past the engines' idle time (RELEASE_IDLE, 5 s), when they give back their contexts
mem_idle=$(memory)
speed=$(for _ in $(seq "$rounds"); do decode "$key_a"; done | median)
ttft "$key_b" >/dev/null
idle_b=$(for _ in $(seq "$rounds"); do ttft "$key_b"; done | median)
# A's long streams (as many tokens as the window allows), then B's TTFT while they run.
for _ in $(seq "$streams"); do
  curl -sS -N --cacert "$ca" -o /dev/null -H "authorization: Bearer $key_a" -H 'content-type: application/json' \
    -d "$(body 1500 'Tell me a very long story about the sea, with many chapters.')" "$url/v1/chat/completions" &
done
sleep 3 # every stream admitted and generating
loaded_b=$(for _ in $(seq "$rounds"); do ttft "$key_b"; done | median)
kill $(jobs -p | tail -n "$streams") 2>/dev/null || true
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); profile $profile; rounds $rounds"
printf 'a new connection and GET /healthz: %.1f ms (in every TTFT below)\n' "$(awk -v x="$base" 'BEGIN {print x * 1000}')"
printf 'TTFT warm sandbox:  %6.1f ms (%.1f ms past the connection)\n' "$(awk -v x="$warm" 'BEGIN {print x * 1000}')" "$(awk -v x="$warm" -v b="$base" 'BEGIN {print (x - b) * 1000}')"
printf 'TTFT fresh sandbox: %6.1f ms (%+.1f ms)\n' "$(awk -v x="$fresh" 'BEGIN {print x * 1000}')" "$(awk -v x="$fresh" -v w="$warm" 'BEGIN {print (x - w) * 1000}')"
report_memory() { # when, "rss anon file pss" lines
  printf 'memory of %s warm engine sandboxes %s (model file %.1f MB), medians: RSS %.1f MB, anonymous (each further tenant) %.1f MB, file-backed %.1f MB, PSS %.1f MB\n' \
    "$(wc -l <<<"$2")" "$1" "$(stat -c %s "$data/models/smol.gguf" | awk '{print $1 / 1048576}')" \
    "$(awk '{print $1 / 1024}' <<<"$2" | median)" "$(awk '{print $2 / 1024}' <<<"$2" | median)" \
    "$(awk '{print $3 / 1024}' <<<"$2" | median)" "$(awk '{print $4 / 1024}' <<<"$2" | median)"
}
report_memory "just after their requests" "$mem"
report_memory "idle 6 s later" "$mem_idle"
printf 'decode through the API: %.1f tokens/s\n' "$speed"
printf 'fairness: B TTFT idle %.1f ms, with A running %s streams %.1f ms: %.2fx\n' \
  "$(awk -v x="$idle_b" 'BEGIN {print x * 1000}')" "$streams" "$(awk -v x="$loaded_b" 'BEGIN {print x * 1000}')" \
  "$(awk -v a="$loaded_b" -v b="$idle_b" 'BEGIN {print a / b}')"
