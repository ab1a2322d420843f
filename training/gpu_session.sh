#!/usr/bin/env bash
# One GPU session in one command (docs/gpu.md): the CUDA check of every shipped model, then every recipe
# (default training/*.yaml; RECIPES or --recipes for others) trained at once on the GPU from the shipped
# weights, weights, logs and summary.md written to $OUT, all within MINUTES (default 9) of wall time.
#   usage: OUT=DIR training/gpu_session.sh [MINUTES] [gpu_session.py run flags] [-- flags for every run]
#          training/gpu_session.sh prepare     # here, before a device call: park stage weights, pack data, wheels
# Missing Python packages (pydantic: a lent GPU machine's Python has torch but not it) are installed from
# wheels in .whl/ when there are any (`prepare` puts them there).
set -u
cd "$(dirname "$0")/.." || exit 1
py=${PYTHON:-python3}
if [ "${1:-}" = prepare ]; then shift; exec "$py" training/gpu_session.py prepare "$@"; fi
minutes=9
case "${1:-}" in [0-9]*) minutes=$1; shift ;; esac
if ! "$py" -c "import pydantic, yaml, safetensors" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  site=${TMPDIR:-/tmp}/napari-vdir-site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHON=$py
exec "$py" training/gpu_session.py run --out "${OUT:?set OUT to the results folder}" --minutes "$minutes" "$@"
