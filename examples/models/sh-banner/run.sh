#!/bin/sh
# A command model for skygate, in POSIX shell: upper-cases input.text and frames it.
# Reads {"id": ..., "input": {"text": "..."}} on stdin; writes {"output": "..."} on stdout.
set -eu
req=$(cat)
# The input is JSON; a real model would use a JSON parser. This one takes the "text" field of a
# flat object with sed, which is enough for the example schema (a string without quotes).
text=$(printf '%s' "$req" | sed -n 's/.*"text"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/\1/p')
if [ -z "$text" ]; then
  echo '{"error": "input.text must be a non-empty string without quotes"}'
  exit 1
fi
echo '{"progress": 50}'
upper=$(printf '%s' "$text" | tr '[:lower:]' '[:upper:]')
printf '{"output": "*** %s ***"}\n' "$upper"
