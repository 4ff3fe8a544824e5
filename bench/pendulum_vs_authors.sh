#!/usr/bin/env bash
# The closing comparison of the DPMD Pendulum bisection (bench/DPMD_PENDULUM_BISECT.md): Pendulum-v1 at
# fastrsm's smoke sizes (64x2 nets, T=5, N=8, batch 128, one env, UTD 1, warm-up 1000, evaluation every 2000 env
# steps x 5 episodes), 15 000 env steps, seeds 1 and 2:
#   the authors' DPMD with the precedence fixed and as published (bench/authors_train.py),
#   fastrsm smoke DPMD, SDAC and SAC, and fastrsm's flowrl preset (DPMD, SDAC) at the same sizes.
# Resumable: a finished item is skipped; an unfinished fastrsm group continues with --resume, an unfinished
# authors' run with its runner's --resume (OUT/NAME/resume.pkl). One torch/XLA thread each, one item at a time.
#
#   bash bench/pendulum_vs_authors.sh AUTHORS_CHECKOUT AUTHORS_PYTHON OUT
#
# AUTHORS_PYTHON: a Python with jax 0.4.30, dm-haiku 0.0.12, optax 0.2.2, numpyro 0.15.2, gymnasium (docs/authors_code.md).
set -u
AUTHORS=$1 APY=$2 OUT=$3
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
SMOKE_SIZES=(--set hidden=64 --set layers=2 --set diffusion_steps=5 --set particles=8 --set batch_size=128
             --set reverse_samples=16 --set warmup_steps=1000 --set eval_every=2000 --set eval_episodes=5
             --set buffer_size=100000)

finished() { [ -f "$1/summary.json" ] && grep -q '"status": "finished"' "$1/summary.json"; }

fastrsm_group() {  # name algo preset [extra --set ...]
  local name=$1 algo=$2 preset=$3; shift 3
  local dir="$OUT/$name"
  if finished "$dir"; then echo "skip $name"; return; fi
  if [ -f "$dir/group.json" ] && [ -f "$dir/seed_1/checkpoints/latest.pt" ] && [ -f "$dir/seed_2/checkpoints/latest.pt" ]; then
    python -m fastrsm.train --resume "$dir" --quiet >> "$OUT/$name.log" 2>&1
  else
    rm -rf "$dir"
    python -m fastrsm.train --env Pendulum-v1 --algo "$algo" --preset "$preset" --device cpu --seeds 1,2 \
      --run-dir "$dir" --quiet --set total_steps=15000 "$@" >> "$OUT/$name.log" 2>&1
  fi
  echo "$name: exit $?"
}

authors() {  # name seed [flags]
  local name=$1 seed=$2; shift 2
  if [ -f "$OUT/$name/summary.json" ]; then echo "skip $name"; return; fi
  local resume=()
  if [ -f "$OUT/$name/resume.pkl" ]; then resume=(--resume); else rm -rf "$OUT/$name"; fi
  "$APY" bench/authors_train.py --authors "$AUTHORS" --seed "$seed" --out "$OUT/$name" --total-steps 15000 "$@" \
    "${resume[@]}" >> "$OUT/$name.log" 2>&1
  echo "$name: exit $?"
}

fastrsm_group smoke-dpmd dpmd smoke
authors authors-fixed-s2 2 --fix-precedence
fastrsm_group smoke-sdac sdac smoke
authors authors-fixed-s1 1 --fix-precedence
fastrsm_group flowrl-dpmd dpmd flowrl "${SMOKE_SIZES[@]}"
fastrsm_group flowrl-sdac sdac flowrl "${SMOKE_SIZES[@]}"
# not run on 2026-12-01 for lack of CPU time:
# fastrsm_group smoke-sac sac smoke
# authors authors-published-s1 1
# authors authors-published-s2 2
