#!/bin/sh
# Install the Debian packages whose data and programs the tests and meta-training use: the Noto
# fonts (glyph tasks), the Fashion-MNIST IDX files and Graphviz (`archadapt show` draws genotypes
# with its dot program). Needs root when they are missing.
set -e
missing=""
[ -d /usr/share/fonts/truetype/noto ] || missing="$missing fonts-noto-core"
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing="$missing dataset-fashion-mnist"
command -v dot >/dev/null 2>&1 || missing="$missing graphviz"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$missing; run: sudo apt-get install$missing" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
