"""tf.distribute through the shared training helpers: mirrored on logical CPUs, multi-worker through `kerazoo launch`.

A strategy needs a fresh TensorFlow (logical devices and collective ops are
set up before devices initialise), so every training run here is a
subprocess.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from kerazoo import launch, training

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A tiny LM trained for a few steps on fixed windows, with the runtime flags of every recipe.
TRAIN_SCRIPT = textwrap.dedent('''
    import argparse, json, sys
    import kerazoo
    import keras
    import numpy as np
    from kerazoo import models, recipe_flags, training

    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    recipe_flags.add_runtime_flags(parser, precision="float32")
    args = recipe_flags.parse_args(parser, None, lambda args: None)
    strategy = training.strategy_from_flags(args)
    batch_size = training.global_batch_size(args.batch_size, strategy)
    ids = np.random.default_rng(0).integers(0, 20, size=(args.steps * batch_size, 9))

    class Steps(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(f"epoch {epoch + 1} done", flush=True)

    plan, _ = training.plan_from_flags(args)
    with plan.scope():
        keras.utils.set_random_seed(0)
        model = models.transformer_lm(20, 8, 16, 2, 1, 32)
        training.compile_model(model, plan, optimizer=training.adamw(1e-2))
        history = model.fit(ids[:, :-1], ids[:, 1:], batch_size=batch_size, epochs=args.epochs, verbose=0,
                            shuffle=False, callbacks=[Steps()])
    print("losses " + json.dumps(history.history["loss"]))
    if args.output_dir:  # elsewhere than the chief, in scratch (see recipe_flags.parse_args)
        training.save_keras_atomically(model, args.output_dir + "/model.keras")
        print("saved " + args.output_dir)
''')

# Per-step losses of one tiny LM under `mirrored` (2 logical CPUs) and on one device, same global batch.
MIRRORED_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    from kerazoo import models, training

    strategy = training.strategy("mirrored", logical_devices=2)
    import keras
    ids = np.random.default_rng(0).integers(0, 20, size=(4 * 8, 9)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).batch(8)

    def train(plan, weights=None):
        with plan.scope():
            keras.utils.set_random_seed(0)
            model = models.transformer_lm(20, 8, 16, 2, 1, 32)
            initial = model.get_weights()
            if weights is not None:
                model.set_weights(weights)
            # A clipping norm below the gradients' norm: clipping is active at every step.
            optimizer = training.adamw(1e-2, global_clipnorm=0.05)
            if len(sys.argv) > 3:  # Keras's own AdamW, which clips each replica's share
                optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.1, beta_2=0.99, global_clipnorm=0.05)
            training.compile_model(model, plan, optimizer=optimizer)
            losses = [model.fit(data.skip(step).take(1), verbose=0).history["loss"][0] for step in range(4)]
        return model, initial, losses

    plan = training.select_plan("float32", "auto", "mirrored")
    mirrored, initial, mirrored_losses = train(plan)
    single, _, single_losses = train(training.TrainingPlan("float32", False, "one device"), initial)
    mirrored.save(sys.argv[1])
    np.save(sys.argv[2], mirrored.predict(ids[:4, :-1], verbose=0))
    print(json.dumps(dict(replicas=strategy.num_replicas_in_sync, jit=plan.jit_compile, reason=plan.reason,
                          optimizers=[type(single.optimizer).__name__, type(mirrored.optimizer).__name__],
                          variable=type(mirrored.weights[0].value).__name__,
                          mirrored=mirrored_losses, single=single_losses,
                          max_weight_difference=max(float(np.abs(a - b).max()) for a, b in
                                                    zip(mirrored.get_weights(), single.get_weights())))))
''')


def _run(args, timeout=240, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), **kwargs)


def test_mirrored_on_two_logical_cpus_matches_one_device_and_saves_a_plain_model(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    result = _run([sys.executable, str(script), str(tmp_path / "m.keras"), str(tmp_path / "p.npy")])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["variable"] == "MirroredVariable"  # really distributed
    assert report["jit"] is False and "XLA" in report["reason"]
    assert report["optimizers"] == ["AdamW", "ReplicatedAdamW"]
    # Each replica takes half of the global batch of 8; the summed, then clipped gradients are one
    # device's on 8 (Keras's AdamW, clipping each replica's share, gives other losses: see below).
    np.testing.assert_allclose(report["mirrored"], report["single"], rtol=1e-4)
    assert report["mirrored"][-1] < report["mirrored"][0]
    assert report["max_weight_difference"] < 1e-4
    # The saved model loads here, in a process without any strategy, and predicts the same.
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    ids = np.random.default_rng(0).integers(0, 20, size=(32, 9)).astype("int32")
    np.testing.assert_allclose(reloaded.predict(ids[:4, :-1], verbose=0), np.load(tmp_path / "p.npy"),
                               atol=1e-5)


def test_mirrored_after_tensorflow_started_is_a_clear_error():
    import tensorflow as tf

    tf.constant(1.0)  # devices initialised
    with pytest.raises(ValueError, match="logical CPU devices.*already"):
        training.strategy("mirrored", logical_devices=3)


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG.*not set.*kerazoo launch"):
        training.strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        training.strategy("multi-worker")
    with pytest.raises(ValueError, match="strategy.*'horovod'"):
        training.strategy("horovod")


def test_plans_under_strategies():
    mirrored = training.select_plan("float32", True, "mirrored")
    assert (mirrored.jit_compile, mirrored.xla_fusion, mirrored.strategy) == (False, False, "mirrored")
    assert "XLA" in mirrored.reason
    [plan] = training.candidate_plans("auto", "auto", "multi-worker")  # one plan: workers must agree
    assert "not timed" in plan.reason
    assert training.TrainingPlan(**plan.to_dict()) == plan  # saved with a checkpoint, read back
    assert training.global_batch_size(16, training.strategy("default")) == 16


@pytest.mark.parametrize("config, chief", [
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_is_chief_follows_tf_config(monkeypatch, config, chief):
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert training.is_chief("multi-worker") is chief
    assert training.is_chief("mirrored") is True


def test_launch_gives_each_worker_its_tf_config_and_prefixes_output(capsys):
    code = ("import json, os; c = json.loads(os.environ['TF_CONFIG']); "
            "print(c['task']['index'], len(c['cluster']['worker']), c['cluster']['worker'][c['task']['index']])")
    lines = []
    assert launch.launch([sys.executable, "-c", code], 3, print_fn=lines.append) == 0
    assert lines[-1] == "launch: all 3 workers finished"
    addresses = [re.search(r"at (localhost:\d+)", line).group(1) for line in lines[:3]]
    assert len(set(addresses)) == 3
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == [f"[worker {i}] {i} 3 {addresses[i]}" for i in range(3)]


def test_launch_stops_every_worker_when_one_fails(capsys):
    code = ("import json, os, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
            "print('started', flush=True); time.sleep(0.5); sys.exit(3) if i == 1 else time.sleep(60)")
    lines = []
    start = time.monotonic()
    assert launch.launch([sys.executable, "-c", code], 2, print_fn=lines.append) == 3
    assert time.monotonic() - start < 20
    assert sorted(capsys.readouterr().out.splitlines()) == ["[worker 0] started", "[worker 1] started"]
    assert re.fullmatch(r"launch: worker 1 \(pid \d+\) exited with status 3; stopping every worker", lines[-1])
    for pid in _pids("\n".join(lines)):
        assert not _alive(pid)


def test_two_workers_train_in_sync_and_the_chief_writes_the_model(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    output = tmp_path / "out"
    result = _run([sys.executable, "-m", "kerazoo.cli", "launch", "--workers", "2", str(script),
                   "--strategy", "multi-worker", "--batch-size", "2", "--output-dir", str(output)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "launch: all 2 workers finished" in out
    assert "[worker 0] batch: 2 per replica x 2 replicas = global batch 4" in out
    losses = {w: re.search(rf"\[worker {w}\] losses (.*)", out).group(1) for w in (0, 1)}
    assert losses[0] == losses[1]  # one synchronous computation
    assert f"[worker 0] saved {output}" in out
    scratch = re.search(r"\[worker 1\] saved (.*)", out).group(1)
    assert "kerazoo-worker-" in scratch and not os.path.exists(scratch)  # removed at exit
    assert "[worker 1] strategy: multi-worker" in out and "not the chief" in out
    assert os.listdir(output) == ["model.keras"]
    assert keras.models.load_model(output / "model.keras").count_params() > 0


def test_a_killed_worker_makes_the_launch_fail_with_no_process_left(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, "-m", "kerazoo.cli", "launch", "--workers", "2", str(script), "--strategy",
         "multi-worker", "--batch-size", "2", "--steps", "1", "--epochs", "100000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = []
    try:
        for line in process.stdout:  # wait until both train in lockstep
            lines.append(line)
            if line.startswith("[worker 1] epoch 2 done"):
                break
        pids = _pids("".join(lines))
        assert len(pids) == 2, "".join(lines)
        os.kill(pids[1], signal.SIGKILL)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + rest
    assert process.returncode == 128 + signal.SIGKILL, out[-3000:]
    assert "launch: worker 1" in out and "SIGKILL" in out
    for pid in pids:
        assert not _alive(pid)


def _pids(output):
    return [int(pid) for pid in re.findall(r"^launch: worker \d+ \(pid (\d+)\)", output, re.MULTILINE)]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runtime_flags_point_other_workers_outputs_into_scratch(monkeypatch, tmp_path):
    import argparse

    from kerazoo import recipe_flags

    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir")
    recipe_flags.add_export_flags(parser, "m")
    recipe_flags.add_runtime_flags(parser)
    argv = ["--strategy", "multi-worker", "--export-dir", str(tmp_path), "--output-dir", str(tmp_path),
            "--logdir", str(tmp_path / "logs")]
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    chief = recipe_flags.parse_args(parser, argv, lambda args: None)
    assert (chief.export_dir, chief.output_dir, chief.logdir) == (str(tmp_path), str(tmp_path), str(tmp_path / "logs"))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    other = recipe_flags.parse_args(parser, argv, lambda args: None)
    for path in (other.export_dir, other.output_dir, other.logdir):
        assert "kerazoo-worker-" in path and not path.startswith(str(tmp_path))
    assert other.checkpoint_dir is None  # a checkpoint directory is read by every worker: never redirected
    with pytest.raises(SystemExit):
        recipe_flags.parse_args(parser, ["--logical-devices", "0"], lambda args: None)


@pytest.mark.slow
def test_lm_recipe_gives_the_same_losses_under_every_strategy(tmp_path):
    recipe = [str(ROOT / "recipes" / "transformer_lm.py"), "--d-model", "32", "--num-heads", "2", "--num-layers",
              "1", "--ff-dim", "64", "--max-length", "32", "--max-steps", "20", "--warmup-steps", "5",
              "--eval-interval", "10", "--eval-batches", "2", "--sample-tokens", "5", "--precision", "float32",
              "--jit-compile", "off"]
    runs = {"default": [sys.executable, *recipe, "--batch-size", "8", "--export-dir", str(tmp_path / "d")],
            "mirrored": [sys.executable, *recipe, "--batch-size", "4", "--strategy", "mirrored",
                         "--export-dir", str(tmp_path / "m")],
            "multi-worker": [sys.executable, "-m", "kerazoo.cli", "launch", "--workers", "2", *recipe,
                             "--batch-size", "4", "--strategy", "multi-worker", "--export-dir", str(tmp_path / "w")]}
    losses = {}
    for name, command in runs.items():
        result = _run(command, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        losses[name] = [float(v) for v in re.findall(r"^(?:\[worker 0\] )?step +\d+: .*val loss ([\d.]+)",
                                                      result.stdout, re.MULTILINE)]
    assert len(losses["default"]) == 3
    np.testing.assert_allclose(losses["mirrored"], losses["default"], atol=2e-4)
    np.testing.assert_allclose(losses["multi-worker"], losses["default"], atol=2e-4)
    for folder in "dmw":
        assert (tmp_path / folder / "transformer_lm" / "1" / "saved_model.pb").exists()


def test_a_signalled_launcher_stops_its_workers():
    # launch.py alone (standard library only), without importing the kerazoo package and TensorFlow.
    code = textwrap.dedent('''
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("launch", sys.argv[1])
        launch = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(launch)
        worker = "import time; print('up', flush=True); time.sleep(60)"
        sys.exit(launch.launch([sys.executable, "-c", worker], 2, grace_seconds=5))
    ''')
    process = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "kerazoo" / "launch.py")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if sum(line.endswith("] up\n") for line in lines) == 2:
                break
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + rest
    assert process.returncode == 128 + signal.SIGTERM, out
    assert "launch: got SIGTERM; stopping every worker" in out
    pids = _pids(out)
    assert len(pids) == 2 and not any(_alive(pid) for pid in pids)
