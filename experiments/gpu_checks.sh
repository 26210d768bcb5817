#!/usr/bin/env bash
# The GPU checks, one call on a lent GPU machine (docs/scaling.md, "Measured on
# a GPU"): the image's own python3 with jax[cuda], equinox, optax, scipy and
# pytest; kinetic_jax from this tree. Each benchmark runs on the GPU and then,
# as its baseline, on the same machine's CPU (JAX_PLATFORMS=cpu). Writes 7 files
# under OUT (default ./gpu-out; the device tool returns at most 8). Each step is
# bounded; the whole takes about 8 minutes on an H200 (its steps, run one by one
# there: parity 0.7, throughput 0.4 + about 0.7 on the CPU, sensitivities 1.7,
# tests 4.5).
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
    2>&1 | tee -a "$out/parity.log" | tail -8
wait $cpu_pid
{ echo "-- on the CPU:"; cat "$out/parity_cpu.log"; } >> "$out/parity.log"
rm -f "$out/parity_cpu.log"
$py experiments/backend_parity.py --compare "$out/parity_cpu.json" "$out/parity_gpu.json" \
    2>&1 | tee -a "$out/parity.log" | tail -24

step "throughput (bench_gpu.py, default sizes), GPU then CPU"
timeout 150 $py experiments/bench_gpu.py --json > "$out/bench_gpu.json" 2> "$out/bench.err"
JAX_PLATFORMS=cpu timeout 150 $py experiments/bench_gpu.py --json --repeats 3 \
    > "$out/bench_cpu.json" 2>> "$out/bench.err"
cat "$out/bench_gpu.json" "$out/bench_cpu.json"; tail -3 "$out/bench.err"

step "sensitivities (bench_sensitivity_books.py), GPU then CPU"
(cd experiments && for platform in "" cpu; do
    echo "platform: ${platform:-gpu}"
    JAX_PLATFORMS=$platform timeout 150 $py bench_sensitivity_books.py --repeats 2 2>&1 \
        | grep -v "cuda_timer"
done) | tee -a "$out/bench.err"

step "engine tests on the GPU (no dashboard, notebooks, CLI or browser: not in the image)"
# tests/conftest.py leaves XLA's flags alone where a GPU plugin is installed (its
# CPU compile flags crashed the CUDA compiler).
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT 300 $py -m pytest -q -n 6 \
    --dist loadgroup -p no:cacheprovider -o addopts="" \
    tests/test_margin_exact.py tests/test_shortfall.py tests/test_sensitivities.py \
    tests/test_worst_case.py tests/test_threefry.py tests/test_simulation.py \
    tests/test_conditional.py tests/test_allocation.py tests/test_jax_properties.py \
    tests/test_hierarchy.py tests/test_sampler.py tests/test_hedge.py tests/test_block.py \
    tests/test_validation.py tests/test_whatif.py tests/test_stress.py -rfE \
    > "$out/pytest.log" 2>&1
echo "pytest exit $?"
grep -E "passed|failed|FAILED|ERROR|node down" "$out/pytest.log" | tail -30
step "done"
