#!/usr/bin/env bash
# Make a local base image for infra/images/Containerfile where no container registry can be reached:
# a Debian bookworm minbase (debootstrap, from Debian's package mirror) with Python 3.11 and venv,
# committed into buildah's local storage. On a machine that can pull images, use a public base
# instead (BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm) and skip this script.
#
#   sudo infra/images/build-base.sh [IMAGE_NAME]        (default localhost/detcurate-base:bookworm)
#
# Needs root, buildah and debootstrap (apt-get install -y buildah debootstrap). About 1 minute and
# 250 MB. An existing image of that name is kept (delete it with `buildah rmi NAME` to rebuild).
set -euo pipefail

name="${1:-localhost/detcurate-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "build-base.sh: $tool not found (apt-get install -y $tool)" >&2; exit 2; }
done
if buildah inspect --type image "$name" >/dev/null 2>&1; then
    echo "build-base.sh: $name exists; kept"
    exit 0
fi

ctr="$(buildah from scratch)"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root="$(buildah mount "$ctr")"
# python3-venv: the Containerfile makes a virtual environment; ca-certificates: pip over HTTPS.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
buildah umount "$ctr" >/dev/null
buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
buildah commit --quiet "$ctr" "$name" >/dev/null
echo "build-base.sh: built $name"
