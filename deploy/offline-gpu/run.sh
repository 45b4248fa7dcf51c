#!/bin/bash
# There (the lent GPU machine, in the repo's root, .gpudata and .whl carried beside it):
#   bash deploy/offline-gpu/run.sh BUDGET_S [cuda|cpu]
# Trains every candidate of .gpudata (prepare.sh) side by side on the one GPU, each for BUDGET_S (steps fitted by
# a probe), exports each run's checkpoint chosen on its validation split (no-harm >= 29) to $OUT/NAME.safetensors
# with the logs, histories and model.json files in $OUT/meta.tgz, then runs the GPU speed benchmarks into
# $OUT/bench.txt within what is left of 560 s. EXTRA adds training arguments (a CPU dry run: EXTRA="--set
# checkpoint_every=2 --set eval_every=2 --set batch_size=4 --set threads=1" PY=.venv/bin/python ... 3 cpu).
# SOUP=1: also export $OUT/soup.safetensors, the uniform weight average of every run's checkpoints from its decay
# start on (runs that share a start: select --average-from --also), and only that model: what comes back is
# capped at 64 MiB, five 13.5 MB models are not. BENCH=0 skips the benchmarks.
BUDGET=${1:-300}; DEV=${2:-cuda}; OUT=${OUT:-/tmp/out}; mkdir -p $OUT /tmp/runs
PY=${PY:-python3}
# shellcheck source=deploy/offline-gpu/common.sh
. "$(dirname "$0")/common.sh"
if [ -d .whl ] && [ "$DEV" = cuda ]; then install_wheels .whl || exit 3; fi
export PYTHONUNBUFFERED=1
date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
RUNS=$(cd .gpudata && ls g*.json | sed "s/.json//")
start=$(date +%s)
for r in $RUNS; do
  $PY -m dpe_core.training .gpudata/$r.json --time-budget $BUDGET --set device=\"$DEV\" $EXTRA > /tmp/runs/$r.log 2>&1 &
done
wait
echo "training wall $(( $(date +%s) - start )) s"
for r in $RUNS; do
  tail -n 2 /tmp/runs/$r.log
  $PY -m dpe_core.training.select /tmp/runs/$r/checkpoints --min-noharm 29 --export /tmp/runs/$r/model --name default --version "${VERSION:-candidate}" > /tmp/runs/$r.select.log 2>&1
  tail -n 2 /tmp/runs/$r.select.log
  # What comes back is capped (64 MiB in all): with a soup, only the soup travels back.
  [ "${SOUP:-0}" = 1 ] || cp /tmp/runs/$r/model/model.safetensors $OUT/$r.safetensors
done
if [ "${SOUP:-0}" = 1 ]; then
  also=(); first=""
  for r in $RUNS; do
    decay=$($PY -c "import glob,json,sys; print(json.load(open(sorted(glob.glob(sys.argv[1]))[-1]))['config']['decay_start'])" "/tmp/runs/$r/checkpoints/step-*.json")
    if [ -z "$first" ]; then first="/tmp/runs/$r/checkpoints --average-from $decay"; else also+=(--also "/tmp/runs/$r/checkpoints:$decay"); fi
  done
  # shellcheck disable=SC2086
  $PY -m dpe_core.training.select $first "${also[@]}" --export /tmp/runs/soup/model --name default --version "${VERSION:-candidate}" > /tmp/runs/soup.select.log 2>&1
  tail -n 3 /tmp/runs/soup.select.log
  cp /tmp/runs/soup/model/model.safetensors $OUT/soup.safetensors
fi
(cd /tmp/runs && tar czf $OUT/meta.tgz *.log */checkpoints/history.jsonl */checkpoints/*.json */model/model.json)
ls -la $OUT
if [ "$DEV" = cuda ] && [ "${BENCH:-1}" = 1 ]; then
  export DPE_TESTDATA=$PWD/.gpudata/testdata
  timeout 60 $PY benchmarks/model_speed.py --batch 1 8 32 --device cuda --photos .gpudata/degrade > $OUT/bench.txt 2>&1
  echo "model_speed rc=$?" >> $OUT/bench.txt
  timeout 90 $PY benchmarks/enhance_speed.py --quick --device cuda >> $OUT/bench.txt 2>&1
  echo "enhance_speed rc=$?" >> $OUT/bench.txt
  left=$(( 560 - ($(date +%s) - start) )); [ $left -gt 30 ] && timeout $left $PY benchmarks/model_speed.py --batch 8 32 --compile --device cuda --photos .gpudata/degrade >> $OUT/bench.txt 2>&1
  echo "model_speed --compile rc=$?" >> $OUT/bench.txt
fi
echo "total $(( $(date +%s) - start )) s"
