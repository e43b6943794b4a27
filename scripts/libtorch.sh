#!/usr/bin/env bash
# Fetches libtorch 2.11.0 (the version tch 0.24 is built for) from the PyPI wheels once into
# the cache and prints the folder to use as LIBTORCH. A second run only checks the version.
set -euo pipefail

VERSION=2.11.0
CACHE="${MIXPOOL_CACHE:-$HOME/.cache/mixpool}"
DEST="$CACHE/libtorch-$VERSION"

check_version() {
    grep -q "^__version__ = '$VERSION" "$1/torch/version.py" 2>/dev/null
}

if check_version "$DEST"; then
    echo "$DEST/torch"
    exit 0
fi

WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
echo "fetching libtorch $VERSION wheels into $WHEELS" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$WHEELS" \
    "torch==$VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2

TMP="$DEST.partial"
rm -rf "$TMP"
mkdir -p "$TMP"
python3 - "$WHEELS" "$TMP" "$VERSION" <<'PY'
import glob, sys, zipfile
wheels, dest, version = sys.argv[1:]
wanted = {
    f"torch-{version}-": ("torch/lib/", "torch/include/", "torch/version.py"),
    "nvidia_cuda_runtime-": ("nvidia/cu13/lib/libcudart.so.13",),
    "nvidia_cuda_cupti-": ("nvidia/cu13/lib/libcupti.so.13",),
}
for prefix, members in wanted.items():
    (wheel,) = glob.glob(f"{wheels}/{prefix}*.whl")
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(members):
                z.extract(name, dest)
PY
check_version "$TMP" || { echo "libtorch in $TMP is not version $VERSION" >&2; exit 1; }
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "$DEST/torch"
