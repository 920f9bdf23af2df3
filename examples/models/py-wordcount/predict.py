"""A command model for skygate, in Python (standard library only).

Protocol: read {"id": ..., "input": {...}} as JSON on stdin; write JSON lines on stdout:
{"progress": 0..100}, {"log": "..."}, {"output": <any JSON>} or {"error": "..."}; files written to
$SKYGATE_OUT_DIR (/out in the sandbox) become output files. Exit 0 on success.
"""

import collections
import json
import os
import sys


def say(**msg):
    print(json.dumps(msg), flush=True)


def main():
    request = json.load(sys.stdin)
    text = request["input"].get("text", "")
    if not isinstance(text, str) or not text.strip():
        say(error="input.text must be a non-empty string")
        return 1
    top = int(request["input"].get("top", 5))
    say(log=f"counting words of {len(text)} characters")
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    counts = collections.Counter(w for w in words if w)
    say(progress=50)
    out_dir = os.environ.get("SKYGATE_OUT_DIR", "/out")
    with open(os.path.join(out_dir, "counts.json"), "w") as f:
        json.dump(dict(counts.most_common()), f)
    say(progress=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
