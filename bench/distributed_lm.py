"""Transformer LM config A under --strategy default, mirrored and multi-worker: same steps, same global batch.

Runs recipes/transformer_lm.py (d_model 256, 4 heads, 4 layers, ff 1024, context 128, float32) for the
same optimizer steps at the same global batch, in interleaved rounds:

- default: one device, the plan's XLA (what a user gets without --strategy);
- default, no XLA: the named peer, the same kernels as the distributed runs (they run without XLA);
- mirrored: 2 logical CPU devices in one process (--batch-size halved);
- multi-worker: 2 processes through `kerazoo launch --pin-cores` (one core each, like `taskset`).

Prints each run's final validation loss and tokens/s (median over the evaluation intervals after the
first, which holds the compile), then ratios to the peer. Then times the all-reduce itself between two
pinned workers (a tensor of the model's size, and a 1-float one for the latency) and extrapolates, with
the arithmetic, to 8 workers of this kind.

    flock /tmp/kerazoo-bench.lock python bench/distributed_lm.py \\
        --data ../shared/data/tinyshakespeare/input.txt --steps 60 --rounds 1
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "transformer_lm.py")
CONFIG_A = ["--max-length", "128", "--d-model", "256", "--num-heads", "4", "--num-layers", "4", "--ff-dim", "1024"]
PEER = "default, no XLA"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a text file (e.g. ../shared/data/tinyshakespeare/input.txt)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default: 60)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (default: 16)")
    parser.add_argument("--eval-interval", type=int, default=20, help="(default: 20)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default: 1)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per run (default: 900)")
    parser.add_argument("--allreduce-worker", type=int, metavar="FLOATS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allreduce_worker:
        return allreduce_worker(args.allreduce_worker)
    if args.batch_size % 2 or args.steps % args.eval_interval or args.steps // args.eval_interval < 2:
        raise SystemExit("error: --batch-size must be even and --steps a multiple (>= 2) of --eval-interval")

    common = [RECIPE, "--data", args.data, *CONFIG_A, "--max-steps", str(args.steps),
              "--warmup-steps", str(args.steps // 10), "--eval-interval", str(args.eval_interval),
              "--eval-batches", "4", "--precision", "float32", "--sample-tokens", "1", "--no-export", "--seed", "0"]
    half = str(args.batch_size // 2)
    runs = {
        "default (plan: XLA)": [sys.executable, *common, "--batch-size", str(args.batch_size)],
        PEER: [sys.executable, *common, "--batch-size", str(args.batch_size), "--jit-compile", "off"],
        "mirrored, 2 logical CPUs": [sys.executable, *common, "--batch-size", half, "--strategy", "mirrored",
                                     "--logical-devices", "2"],
        "multi-worker, 2 x 1 core": [sys.executable, "-m", "kerazoo.cli", "launch", "--workers", "2",
                                     "--pin-cores", *common, "--batch-size", half, "--strategy", "multi-worker"],
    }
    names = list(runs)
    results = {name: [] for name in names}
    parameters = None
    print(f"config A, {args.steps} steps at global batch {args.batch_size} x 128 tokens, float32; "
          f"{os.cpu_count()} cores (shared machine: only same-run ratios mean anything)", flush=True)
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            result = run_recipe(runs[name], args.timeout)
            parameters = parameters or result["parameters"]
            results[name].append(result)
            print(f"round {round_index + 1}, {name}: val loss {result['val_loss']:.4f}, "
                  f"{result['tokens_per_second']:,.0f} tokens/s ({result['wall']:.0f} s)", flush=True)

    peer = statistics.median(r["tokens_per_second"] for r in results[PEER])
    print(f"\n{'run':28s} {'val loss':>9s} {'tokens/s':>9s} {'vs ' + PEER:>18s}")
    for name in names:
        loss = statistics.median(r["val_loss"] for r in results[name])
        speed = statistics.median(r["tokens_per_second"] for r in results[name])
        print(f"{name:28s} {loss:9.4f} {speed:9,.0f} {speed / peer:17.2f}x")

    seconds = allreduce_seconds(parameters, args.timeout)
    print("\nall-reduce between 2 workers pinned to one core each (loopback gRPC), medians of 20:")
    print(f"  1 float: {seconds['latency'] * 1e3:.2f} ms; {parameters:,} floats ({parameters * 4 / 1e6:.1f} MB, "
          f"the gradients): {seconds['full'] * 1e3:.1f} ms")
    extrapolate(parameters, seconds, statistics.median(
        r["tokens_per_second"] for r in results["multi-worker, 2 x 1 core"]), args.batch_size)
    return 0


def run_recipe(command, timeout):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    out = result.stdout
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:6])}... exited {result.returncode}:\n"
                         f"{out[-3000:]}{result.stderr[-3000:]}")
    if "[worker 0]" in out:  # a launch: read the chief's lines
        out = "\n".join(line[len("[worker 0] "):] for line in out.splitlines() if line.startswith("[worker 0] "))
    speeds = [float(s.replace(",", "")) for s in re.findall(r"val perplexity [\d.]+, ([\d,]+) tokens/s", out)]
    return dict(val_loss=float(re.search(r"done: \d+ steps, val loss ([\d.]+)", out).group(1)),
                tokens_per_second=statistics.median(speeds[1:]),  # the first interval holds the compile
                parameters=int(re.search(r"model: ([\d,]+) parameters", out).group(1).replace(",", "")),
                wall=time.perf_counter() - start)


def allreduce_seconds(floats, timeout):
    """Median seconds of an all-reduce of `floats` floats and of 1 float between 2 pinned local workers."""
    result = subprocess.run([sys.executable, "-m", "kerazoo.cli", "launch", "--workers", "2", "--pin-cores",
                             os.path.abspath(__file__), "--data", "-", "--allreduce-worker", str(floats)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    found = re.search(r"\[worker 0\] allreduce latency ([\d.e-]+) full ([\d.e-]+)", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"error: the all-reduce timing failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return dict(latency=float(found.group(1)), full=float(found.group(2)))


def allreduce_worker(floats):
    """Inside `kerazoo launch`: time all-reduces of 1 and of `floats` floats under MultiWorkerMirroredStrategy."""
    from kerazoo import training

    strategy = training.strategy("multi-worker")
    import tensorflow as tf

    def timed(size):
        value = tf.ones([size])

        @tf.function
        def all_reduce():
            return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", value))

        for _ in range(3):
            strategy.experimental_local_results(all_reduce())[0].numpy()
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            strategy.experimental_local_results(all_reduce())[0].numpy()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    print(f"allreduce latency {timed(1):.6e} full {timed(floats):.6e}", flush=True)
    return 0


def extrapolate(parameters, seconds, worker2_tokens_per_second, global_batch):
    """Ring all-reduce: T(N) = 2(N-1) alpha + 2(N-1)/N * S / beta; alpha and S/beta from the 2-worker timings."""
    alpha = seconds["latency"] / 2                   # T(2) of 1 float = 2 alpha
    transfer = seconds["full"] - seconds["latency"]  # T(2) of S bytes - T(2) of ~0 = (2 * 1/2) S / beta
    tokens_per_step_2 = global_batch * 128
    step_2 = tokens_per_step_2 / worker2_tokens_per_second
    compute = step_2 - seconds["full"]               # per-worker step without its all-reduce
    per_worker_tokens = tokens_per_step_2 / 2
    print("\nextrapolation to N workers of this kind (each: 1 core, the same per-worker batch), ring all-reduce")
    print(f"  T(N) = 2(N-1) alpha + 2(N-1)/N S/beta, with alpha = {alpha * 1e3:.2f} ms and "
          f"S/beta = {transfer * 1e3:.1f} ms (from the 2-worker timings)")
    print(f"  step(2) = {step_2 * 1e3:.0f} ms measured = compute {compute * 1e3:.0f} ms + "
          f"all-reduce {seconds['full'] * 1e3:.0f} ms ({seconds['full'] / step_2:.0%} of the step)")
    for n in (2, 4, 8):
        reduce_n = 2 * (n - 1) * alpha + 2 * (n - 1) / n * transfer
        step = compute + reduce_n
        print(f"  N={n}: all-reduce {reduce_n * 1e3:.0f} ms, step {step * 1e3:.0f} ms, "
              f"{n * per_worker_tokens / step:,.0f} tokens/s, scaling efficiency {compute / step:.0%} "
              f"(vs N x one worker without communication)")


if __name__ == "__main__":
    sys.exit(main())
