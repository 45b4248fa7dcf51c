#!/bin/bash
# There (the lent GPU machine, in the repo's root, .styledata and .whl carried beside it):
#   bash deploy/offline-gpu/style.sh BUDGET_S LOOK [cuda|cpu]
# The style benchmark (benchmarks/style.py, docs/style.md) at a GPU's budget: the unpaired two-way GAN, its paired
# bound and the ablations (fixed penalty weights, one shared BN set) train side by side, each in its own process,
# on the prepared data folder .styledata/LOOK (here: cp -rL WORK/LOOK/data-matched-extra111 .styledata/LOOK).
# A probe of 50 two-way iterations, all variants at once, sets the iterations that fit BUDGET_S; every variant gets
# the same number of generator updates. Each run is chosen on S (PSNR) and scored on T with PSNR only (the machine
# has no scikit-image). Back in $OUT: meta.tgz with every run's results.json, model.json, history, log and progress
# plot, and VARIANT.safetensors for each of KEEP (default: unpaired supervised; at most four fit): put each beside
# its model.json and `style.py --data ... --score-only` scores it here with CIEDE2000. RECIPE holds the style.py
# arguments every run shares (default: look-cool-faded v6's recipe, deploy/recipes/style-look-cool-v6.json).
BUDGET=${1:-300}; LOOK=${2:-cool-faded}; DEV=${3:-cuda}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}
VARIANTS=${VARIANTS:-unpaired supervised wgan-gp-0.1 wgan-gp-10 wgan-gp-1000 shared-bn}
KEEP=${KEEP:-unpaired supervised}
RECIPE=${RECIPE:---size 128 --batch 8 --ratio 2 --critic-lr-scale 10 --transport-weight 1000 --transport-init \
--transport-kind affine --critic-stats only}
# shellcheck source=deploy/offline-gpu/common.sh
. "$(dirname "$0")/common.sh"
if [ -d .whl ] && [ "$DEV" = cuda ]; then install_wheels .whl || exit 3; fi
export PYTHONUNBUFFERED=1
date -u; nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
DATA=.styledata/$LOOK
[ -f "$DATA/split.json" ] || { echo "no prepared data folder $DATA"; exit 2; }
start=$(date +%s)
two_way=$(for v in $VARIANTS; do [ "$v" = supervised ] || echo "$v"; done)
# The probe times two-way iterations; the paired run's updates follow from them.
[ -n "$two_way" ] || { echo "VARIANTS ($VARIANTS) needs at least one two-way variant to time"; exit 2; }
for v in $two_way; do  # the probe: every two-way variant at once, as in the real runs
  # shellcheck disable=SC2086
  $PY benchmarks/style.py --look "$LOOK" --data "$DATA" --work "/tmp/probe/$v" --variants "$v" $RECIPE \
    --iterations 50 --no-colour --tag probe > "/tmp/probe-$v.log" 2>&1 &
done
wait
per_it=$($PY - <<'PY'
import glob, json
rates = []
for f in glob.glob("/tmp/probe/*/*/*/checkpoints/history.jsonl"):
    rows = {r["iteration"]: r["seconds"] for r in map(json.loads, open(f))}
    if 25 in rows and 50 in rows:
        rates.append((rows[50] - rows[25]) / 25)
print(max(rates) if rates else 0)
PY
)
probe_s=$(( $(date +%s) - start ))
# 20% slack: the variants' speeds differ and the exports and scoring follow the training
iterations=$($PY -c "import sys; b, p, s = map(float, sys.argv[1:]); print(max(20, int(0.8 * (b - p) / max(s, 1e-3)) // 20 * 20))" \
  "$BUDGET" "$probe_s" "${per_it:-0}")
echo "probe ${probe_s} s: ${per_it} s per two-way iteration, all at once -> $iterations iterations each"
[ "$per_it" = 0 ] && { tail -n 20 /tmp/probe-*.log; exit 4; }
for v in $VARIANTS; do
  # shellcheck disable=SC2086
  $PY benchmarks/style.py --look "$LOOK" --data "$DATA" --work "/tmp/style/$v" --variants "$v" $RECIPE \
    --iterations "$iterations" --choose-on-s --no-colour --tag "gpu-u$((iterations / 2))" > "/tmp/style-$v.log" 2>&1 &
done
wait
echo "training, choosing and scoring: $(( $(date +%s) - start - probe_s )) s"
for v in $VARIANTS; do grep -E "^\| $v |chose iteration" "/tmp/style-$v.log"; done
mkdir -p /tmp/style/logs && cp /tmp/style-*.log /tmp/probe-*.log /tmp/style/logs/
cd /tmp/style || exit 5
# What comes back: at most 8 files of 16 MiB each, 64 MiB in all; so no model inside an archive.
# shellcheck disable=SC2046
tar czf "$OUT/meta.tgz" logs */"$LOOK"/results.json $(ls -d */"$LOOK"/*/model/model.json \
  */"$LOOK"/*/checkpoints/history.jsonl */"$LOOK"/*/checkpoints/progress.png 2>/dev/null)
for v in $KEEP; do cp "$v"/"$LOOK"/*/model/model.safetensors "$OUT/$v.safetensors"; done
ls -la "$OUT"
echo "total $(( $(date +%s) - start )) s"
