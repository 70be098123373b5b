#!/bin/sh
# The image's whole filesystem, laid out in DEST: the Dockerfile copies DEST onto `scratch`, and
# the empty-root test (tests/image.rs) runs the binary in a root made by this same script, so
# what the test proves is what the image holds. Everything else a container sees at run time
# (/etc/hosts, /etc/resolv.conf, /proc, /dev, mounted volumes) comes from the runtime.
#
#   deploy/image/rootfs.sh DEST BINARY
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 DEST BINARY" >&2
  exit 2
fi
dest=$1
bin=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)

mkdir -p "$dest/usr/local/bin" "$dest/usr/local/share/man/man1" \
  "$dest/usr/local/share/orgctl/completions" "$dest/etc" "$dest/tmp"
install -m 0755 "$bin" "$dest/usr/local/bin/orgctl"
install -m 0644 "$repo"/man/*.1 "$dest/usr/local/share/man/man1/"
install -m 0644 "$repo"/completions/* "$dest/usr/local/share/orgctl/completions/"
# The user the image runs as (USER 65532 in the Dockerfile, runAsUser in job.yaml): a name for
# the audit log's OS user when USER is unset, and a home directory for sqlx's default ~/.pgpass.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
mkdir -p "$dest/home/nonroot"
# A temporary directory for what a run writes when the Job mounts nothing there (a report named
# with a relative path under /tmp, `dev up`'s default). With readOnlyRootFilesystem it is a
# volume instead (job.yaml).
chmod 1777 "$dest/tmp"
install -m 0644 "$repo/LICENSE-MIT" "$repo/LICENSE-APACHE" "$dest/usr/local/share/orgctl/"
