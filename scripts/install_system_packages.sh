#!/bin/sh
# Install the Debian packages whose data the tests and meta-training read: the Noto fonts
# (glyph tasks) and the Fashion-MNIST IDX files. Needs root when they are missing.
set -e
missing=""
[ -d /usr/share/fonts/truetype/noto ] || missing="$missing fonts-noto-core"
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing="$missing dataset-fashion-mnist"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$missing; run: sudo apt-get install$missing" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
