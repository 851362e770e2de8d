#!/usr/bin/env bash
# Builds the compose stack's images (`make images` runs this): rlhf-services:$ENGINE from the Dockerfile, and a
# Prometheus image when prom/prometheus cannot be pulled. Works without Docker Hub:
#   - base image: BASE_IMAGE (default python:3.11-slim) if it is present or can be pulled; otherwise a bare
#     Debian bookworm made here with debootstrap (rlhf-debian:bookworm, built once), and it says so;
#   - Prometheus: prom/prometheus if it can be pulled; otherwise rlhf-prometheus:debian (Debian's `prometheus`
#     on the same base), and it sets PROMETHEUS_IMAGE=rlhf-prometheus:debian in .env, where docker-compose
#     reads it (the line is removed again once prom/prometheus can be pulled);
#   - pip: the machine's local wheels (PIP_FIND_LINKS) go to deploy/wheels/, its CA bundle (PIP_CERT, or pip's
#     `cert` setting) to the build as a secret: both reach only the build step, never an image layer.
# Grafana is pulled when it can be; `docker-compose --profile grafana up -d` starts it only then.
# Images are cached by Docker between runs; a rebuild after a source change redoes the last layer only.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-cpu}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=rlhf-debian:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROMETHEUS_UPSTREAM=prom/prometheus:v2.53.0
PROMETHEUS_LOCAL=rlhf-prometheus:debian
GRAFANA_UPSTREAM=grafana/grafana:11.1.0
ENV_FILE=${ENV_FILE:-.env}

say() { echo "images: $*"; }

# A docker CLI that builds with BuildKit (secrets, cache and bind mounts): buildx, or a pre-23 CLI's built-in
# BuildKit client (Debian's docker.io 20.10). A newer CLI without the buildx plugin cannot.
docker_build() {
  local cli
  for cli in docker /usr/bin/docker; do
    command -v "$cli" >/dev/null 2>&1 || continue
    if "$cli" buildx version >/dev/null 2>&1; then
      "$cli" buildx build --load "$@"
      return
    fi
    if DOCKER_BUILDKIT=1 "$cli" build --help 2>/dev/null | grep -q -- '--secret'; then
      DOCKER_BUILDKIT=1 "$cli" build "$@"
      return
    fi
  done
  say "no docker CLI here builds with BuildKit (install the buildx plugin)" >&2
  return 1
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# Present locally, or pulled now (a short timeout: an unreachable registry must not stall the build).
available() { have_image "$1" || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

base=$BASE_IMAGE
if ! available "$BASE_IMAGE"; then
  base=$LOCAL_BASE
  if have_image "$LOCAL_BASE"; then
    say "$BASE_IMAGE cannot be pulled: using the local Debian bookworm base $LOCAL_BASE (built earlier)"
  else
    say "$BASE_IMAGE cannot be pulled: building a local Debian bookworm base $LOCAL_BASE with debootstrap"
    command -v debootstrap >/dev/null 2>&1 || { say "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
fi

# The machine's local wheels (what `make setup`'s pip finds through find-links): linked into the build context.
find_links=${PIP_FIND_LINKS:-$(pip3 config get global.find-links 2>/dev/null || true)}
find -L deploy/wheels -maxdepth 1 -name '*.whl' -delete
torch_index=()
if [ -n "$find_links" ] && [ -d "$find_links" ] && ls "$find_links"/*.whl >/dev/null 2>&1; then
  for wheel in "$find_links"/*.whl; do
    ln -f "$wheel" deploy/wheels/ 2>/dev/null || cp "$wheel" deploy/wheels/
  done
  say "offering the local wheels of $find_links to pip during the build"
  # The CPU torch is among them: no need to reach PyTorch's index.
  if ls deploy/wheels/torch-*+cpu-*.whl >/dev/null 2>&1; then torch_index=(--build-arg TORCH_INDEX_URL=); fi
fi
cert=${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}
secret=()
if [ -n "$cert" ] && [ -f "$cert" ]; then
  secret=(--secret "id=pip_cert,src=$cert")
  say "handing pip's CA bundle $cert to the build as a secret"
fi

say "building rlhf-services:$ENGINE on $base"
docker_build -t "rlhf-services:$ENGINE" --build-arg "BASE_IMAGE=$base" --build-arg "ENGINE=$ENGINE" \
  "${torch_index[@]}" "${secret[@]}" -f Dockerfile .

# docker-compose.yml reads the Prometheus image from PROMETHEUS_IMAGE (default prom/prometheus).
set_prometheus_image() {
  if [ -f "$ENV_FILE" ]; then sed -i '/^PROMETHEUS_IMAGE=/d' "$ENV_FILE"; fi
  if [ -n "$1" ]; then
    (umask 077; echo "PROMETHEUS_IMAGE=$1" >>"$ENV_FILE")
    say "set PROMETHEUS_IMAGE=$1 in $ENV_FILE for docker-compose"
  fi
}
if available "$PROMETHEUS_UPSTREAM"; then
  say "Prometheus: $PROMETHEUS_UPSTREAM"
  set_prometheus_image ""
else
  say "$PROMETHEUS_UPSTREAM cannot be pulled: building $PROMETHEUS_LOCAL (Debian's prometheus) on $base"
  docker_build -t "$PROMETHEUS_LOCAL" --build-arg "BASE_IMAGE=$base" -f deploy/prometheus/Dockerfile deploy/prometheus
  set_prometheus_image "$PROMETHEUS_LOCAL"
fi

if available "$GRAFANA_UPSTREAM"; then
  say "Grafana: $GRAFANA_UPSTREAM (start it with: docker-compose --profile grafana up -d)"
else
  say "$GRAFANA_UPSTREAM cannot be pulled: the stack runs without Grafana (its profile stays off)"
fi
