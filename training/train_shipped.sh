#!/usr/bin/env bash
# Train every shipped model at once, one process per recipe, then collect the weights and logs.
# usage: training/train_shipped.sh OUTDIR [TIME_BUDGET_MINUTES] [extra flags for every run]
# Again into the same OUTDIR: add --resume (continue each run) or --overwrite (start each again) to the flags;
# without either, a run folder that holds a run is refused.
# RECIPES="training/paper/*.yaml training/sr-*.yaml" picks other recipes (default: training/*.yaml).
# FROM_SHIPPED=1 fine-tunes each recipe's model from its shipped weights (models/<name>.safetensors)
# instead of training it from scratch (a recipe with init_network refuses --init: use training/gpu_session.py,
# which writes recipes that continue from the shipped weights).
# With a time budget each run anneals its learning rate over that much training time (the shipped
# weights were made this way on one GPU; the step count each reached is in its recipe and log).
# DEADLINE=SECONDS interrupts the runs still going that long after the start (Ctrl-C: each saves a checkpoint;
# its weights are those of its last validation) and kills them KILL_GRACE seconds later (default 20), so the
# collection below always happens in time. PYTHON picks the interpreter (default python3).
set -u
out=${1:?usage: train_shipped.sh OUTDIR [MINUTES] [flags...]}; shift
budget=${1:-}; [ $# -gt 0 ] && shift
runs=${RUNS_DIR:-$out/runs}
mkdir -p "$out" "$runs"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1
for recipe in ${RECIPES:-training/*.yaml}; do
  name=$(basename "$recipe" .yaml)
  init=(); [ -n "${FROM_SHIPPED:-}" ] && init=(--init "models/$name.safetensors")
  ${PYTHON:-python3} -m napari_vdir.training --recipe "$recipe" --out "$runs/$name" --quiet "${init[@]}" \
    ${budget:+--time-budget "$budget"} "$@" > "$runs/$name.log" 2>&1 &
done
collect() {
  cp -f "$runs"/*/*.safetensors "$out"/ 2>/dev/null
  tar -czf "$out/logs.tgz" -C "$runs" $(cd "$runs" && ls *.log */log.csv 2>/dev/null) 2>/dev/null
}
start=$SECONDS last=$SECONDS signalled=
while [ -n "$(jobs -rp)" ]; do
  sleep 1
  [ $((SECONDS - last)) -ge 30 ] && { collect; last=$SECONDS; }
  if [ -n "${DEADLINE:-}" ] && [ $((SECONDS - start)) -ge "$DEADLINE" ]; then
    if [ -z "$signalled" ]; then
      echo "train_shipped.sh: deadline (${DEADLINE} s): interrupting $(jobs -rp | wc -l) run(s)" >&2
      kill -INT $(jobs -rp) 2>/dev/null; signalled=1
    elif [ $((SECONDS - start)) -ge $((DEADLINE + ${KILL_GRACE:-20})) ]; then
      kill -KILL $(jobs -rp) 2>/dev/null
    fi
  fi
done
wait
collect
tail -n 2 "$runs"/*.log
