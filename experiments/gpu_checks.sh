#!/usr/bin/env bash
# The GPU checks, one call on a lent GPU machine (docs/scaling.md, "Measured on
# a GPU"): the image's own python3 with jax[cuda], equinox, optax, scipy and
# pytest; kinetic_jax from this tree. Writes logs and JSON under OUT (default
# ./gpu-out). Each step is bounded so the whole stays within about 8 minutes.
#
#   bash experiments/gpu_checks.sh [OUT]
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=python3
step() { echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
$py -c "import jax, jaxlib, equinox, optax, numpy; print('jax', jax.__version__, 'equinox', equinox.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__, jax.devices())"

step "parity: the reference book on the host CPU (background) and on the GPU, TF32"
JAX_PLATFORMS=cpu timeout 200 $py experiments/backend_parity.py --out "$out/parity_cpu.json" \
    > "$out/parity_cpu.log" 2>&1 &
cpu_pid=$!
timeout 200 $py experiments/backend_parity.py --out "$out/parity_gpu.json" --tf32 \
    2>&1 | tee "$out/parity_gpu.log" | tail -8
wait $cpu_pid
tail -2 "$out/parity_cpu.log"
$py experiments/backend_parity.py --compare "$out/parity_cpu.json" "$out/parity_gpu.json" \
    2>&1 | tee "$out/parity_compare.log" | tail -24

step "throughput (bench_gpu.py, default sizes)"
timeout 150 $py experiments/bench_gpu.py --json > "$out/bench_gpu.json" 2> "$out/bench_gpu.err"
cat "$out/bench_gpu.json"; tail -3 "$out/bench_gpu.err"

step "engine tests on the GPU (no dashboard, notebooks, CLI or browser: not in the image)"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT 230 $py -m pytest -q -n 6 \
    --dist loadgroup -p no:cacheprovider -o addopts="" \
    tests/test_margin_exact.py tests/test_shortfall.py tests/test_sensitivities.py \
    tests/test_worst_case.py tests/test_threefry.py tests/test_simulation.py \
    tests/test_conditional.py tests/test_allocation.py tests/test_jax_properties.py \
    tests/test_hierarchy.py tests/test_sampler.py tests/test_hedge.py tests/test_block.py \
    tests/test_validation.py tests/test_whatif.py tests/test_stress.py -rfE \
    > "$out/pytest.log" 2>&1
echo "pytest exit $?"
grep -E "passed|failed|FAILED|ERROR" "$out/pytest.log" | tail -30
step "done"
