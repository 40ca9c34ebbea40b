#!/usr/bin/env bash
# Builds the local test images FROM scratch: localhost/faas-{echo,cpu,mem,crash}.
# Idempotent: an image is rebuilt only when its inputs changed (hash label).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p build
for prog in burn hog crash; do
  if [ ! -x "build/$prog" ] || [ "$prog.c" -nt "build/$prog" ]; then
    gcc -O2 -static -o "build/$prog" "$prog.c"
  fi
done
cp -f /bin/busybox busybox
for name in echo cpu mem crash; do
  inputs=$(cat "Containerfile.$name" build/* echo/start.sh echo/www/cgi-bin/echo | sha256sum | cut -c1-16)
  current=$(podman image inspect --format '{{ index .Labels "faas.inputs" }}' "localhost/faas-$name" 2>/dev/null || true)
  if [ "$current" != "$inputs" ]; then
    podman build -q --label "faas.inputs=$inputs" -f "Containerfile.$name" -t "localhost/faas-$name:latest" . >/dev/null
    echo "built localhost/faas-$name"
  fi
done
