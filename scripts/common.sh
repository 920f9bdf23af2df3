# Shared by the load scripts: source it.
wait_url() { # file -> the https URL a starting skygate prints there
  for _ in $(seq 1 200); do
    url=$(grep -o 'https://[0-9.:]*' "$1" | head -1 || true)
    [[ -n "$url" ]] && { echo "$url"; return; }
    sleep 0.05
  done
  echo "server did not start" >&2; exit 1
}
