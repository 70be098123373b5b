#!/bin/sh
# The binary the image carries, built one way everywhere: the Dockerfile, the release workflow
# and .ci/run (whose empty-root test runs it) all call this script. A static musl binary: it
# needs no libc, no NSS modules and no loader in the image, and resolves names from /etc/hosts
# and /etc/resolv.conf, which the container runtime provides. TLS roots are compiled in
# (webpki-roots), so no CA bundle is needed either. Prints the binary's path.
#
#   deploy/image/build.sh            # this machine's architecture
#   ORGCTL_ARCH=aarch64 deploy/image/build.sh
set -eu
cd "$(dirname "$0")/../.."
arch=${ORGCTL_ARCH:-$(uname -m)}
target="$arch-unknown-linux-musl"
cargo build --release --locked --target "$target" >&2
echo "target/$target/release/orgctl"
