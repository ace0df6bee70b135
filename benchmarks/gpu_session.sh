#!/usr/bin/env bash
# One GPU session in one command: build the extension against the machine's torch, run the GPU
# tests, run the benchmarks, summarize. Each stage has its own time limit so a slow one cannot eat
# the others' results; logs and the benchmark JSON go to $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh [wheels] [install] [tests=<pytest args>] [bench=<pytest args>]
#                                  [behaviour=<env> <vector_td3 args>] [py=<script args>]
#
# wheels: install the wheels carried in .whl/ (gymnasium, mujoco: not in the GPU image) into
#   /tmp/site. behaviour: train behaviour policies with dawm_fast.behavior.vector_td3 (vectorized
#   envs, graphed TD3 updates) and pack the workdir, without its buffer, as $OUT/<env>_vec.tgz;
#   unpack it under behavior_runs/ and run dawm_fast.behavior.export on it. py: run a Python script
#   (e.g. benchmarks/profile_step.py), its log in $OUT.
#
# The device tool copies the working tree (at most 64 MiB); a local behavior_runs/ (git-ignored,
# ~61 MB of behaviour-training checkpoints) does not fit beside the rest, and no stage needs it
# except `behaviour`: move it out of the tree for the call and back after it.
#
# e.g. bash benchmarks/gpu_session.sh install@120 "tests=tests/test_ops.py" \
#        "bench@90=benchmarks/test_sampling.py"      (stage@seconds sets that stage's limit)
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
STAGE_LIMIT=${STAGE_LIMIT:-300}
PY=${PY:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

n=0
for arg in "$@"; do
  n=$((n + 1))
  stage=${arg%%=*}
  rest=${arg#*=}
  [ "$rest" = "$arg" ] && rest=""
  limit=$STAGE_LIMIT
  case $stage in *@*) limit=${stage#*@}; stage=${stage%@*} ;; esac
  start=$(date +%s)
  case $stage in
    wheels)
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl > "$OUT/wheels.log" 2>&1
      rc=$?; export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
      $PY -c "import gymnasium, mujoco; print('gymnasium', gymnasium.__version__, 'mujoco', mujoco.__version__)"
      ;;
    behaviour)
      env_name=${rest%% *}
      wd=/tmp/behaviour/${env_name}_vec
      mkdir -p "$wd"
      eval timeout "$limit" $PY -m dawm_fast.behavior.vector_td3 --env $rest --workdir "$wd" \
        > "$OUT/${env_name}_vec.log" 2>&1
      rc=$?; tail -5 "$OUT/${env_name}_vec.log"
      tar czf "$OUT/${env_name}_vec.tgz" -C /tmp/behaviour --exclude buffer.npy "${env_name}_vec"
      ;;
    install)
      timeout "$limit" $PY -m pip install -q --no-build-isolation --no-deps -e . \
        > "$OUT/install.log" 2>&1
      rc=$?; tail -5 "$OUT/install.log"
      $PY -c "import dawm_fast.ops as o; e = o.load_extension(); print('extension:', e.__name__, 'cuda:', e.with_cuda())"
      ;;
    py)
      eval timeout "$limit" $PY $rest > "$OUT/py$n.log" 2>&1
      rc=$?; tail -45 "$OUT/py$n.log"
      ;;
    tests)
      eval timeout "$limit" $PY -m pytest -v -p no:cacheprovider -rs $rest \
        > "$OUT/tests$n.log" 2>&1
      rc=$?; grep -E "FAILED|ERROR|[0-9]+ (passed|failed)" "$OUT/tests$n.log" | tail -15
      ;;
    bench)
      eval timeout "$limit" $PY -m pytest -q -p no:cacheprovider --benchmark-only \
        --benchmark-json="$OUT/bench$n.json" --benchmark-columns=mean,median,stddev,rounds $rest \
        > "$OUT/bench$n.log" 2>&1
      rc=$?; grep -E "passed|failed|rror" "$OUT/bench$n.log" | tail -8
      [ -s "$OUT/bench$n.json" ] && $PY benchmarks/summarize.py "$OUT/bench$n.json"
      ;;
    *) echo "unknown stage $stage"; rc=2 ;;
  esac
  echo "== stage $stage rc=$rc in $(( $(date +%s) - start )) s"
done
