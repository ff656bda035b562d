#!/bin/sh
# A root for Debian's arm64 CPython 3.11 under qemu-user: the cross glibc
# (/usr/aarch64-linux-gnu) plus the arm64 packages of python3.11-minimal and what
# it loads, unpacked (not installed) with dpkg-deb. Used by record_cases.py's
# arm64 Python cases (qemu -L ROOT, the interpreter run as ROOT/usr/bin/python3.11).
#
#   testsources/arm64_python_root.sh [ROOT]      (default /tmp/coredump-arm64-python)
set -eu
root=${1:-/tmp/coredump-arm64-python}
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -q
fi
(cd "$debs" && apt-get download -q python3.11-minimal:arm64 libpython3.11-minimal:arm64 \
  libpython3.11-stdlib:arm64 zlib1g:arm64 libexpat1:arm64)
mkdir -p "$root"
cp -a /usr/aarch64-linux-gnu/lib "$root/"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
echo "$root/usr/bin/python3.11"
