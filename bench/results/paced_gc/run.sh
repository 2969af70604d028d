#!/usr/bin/env bash
# alternate the tree before the tuple change (53fe0a7) and after, otas on the paced no-op server
set -u
for L in 2 1.5; do
for r in 1 2 3; do
  for t in old new; do
    if [ $t = old ]; then d=/tmp/sb_old; pp=/tmp/sb_old; else d=/work/main; pp=/work/main; fi
    (cd $d && PYTHONPATH=$pp /work/main/.venv/bin/python bench/paced_scale.py --scales 3 --load $L --policies otas --rounds 1 \
       --otas /work/main/.venv/bin/otas --out /tmp/pab/${t}_L${L}_r$r > /tmp/pab_${t}_L${L}_r$r.log 2>&1)
    python3 -c "
import json;d=json.load(open('/tmp/pab/${t}_L${L}_r$r/paced_scale.json'));
for x in d['rows']: print('$t L$L r$r', round(x['live_utility']), round(x['live_over_sim'],3), round(x['live_mean_gamma'],1), round(x['live_slo'],3), x['floor_batches'])"
  done
done
done
