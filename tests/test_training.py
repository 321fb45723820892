"""Models from the layers train with XLA and with mixed_bfloat16; the training helper's plan and AdamW setup."""

import argparse
import glob
import importlib.util
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
import tensorflow as tf

from kerazoo import data, models, training

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tiny_lm():
    return models.transformer_lm(vocab_size=20, max_length=8, d_model=16, num_heads=2,
                                 num_layers=1, ff_dim=32)


def _fit_losses(plan, rng):
    with plan.policy_scope():
        model = _tiny_lm()
    training.compile_model(model, plan, optimizer=training.adamw(1e-2))
    ids = rng.integers(0, 20, size=(8, 9))
    history = model.fit(ids[:, :-1], ids[:, 1:], epochs=40, batch_size=8, verbose=0)
    return model, history.history["loss"]


def test_tiny_lm_learns_with_xla(rng):
    model, losses = _fit_losses(training.TrainingPlan("float32", True, "test"), rng)
    assert model.jit_compile is True
    assert losses[-1] < 0.5 * losses[0]


def test_tiny_lm_learns_with_mixed_bfloat16(rng):
    plan = training.TrainingPlan("mixed_bfloat16", False, "test")
    model, losses = _fit_losses(plan, rng)
    assert model.get_layer("block_0").compute_dtype == "bfloat16"
    assert model.get_layer("block_0").attention.qkv_dense.kernel.dtype == "float32"
    assert model.output.dtype == "float32"  # logits, so the loss is float32
    assert keras.config.dtype_policy().name == "float32"  # the scope restored the policy
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]


def test_select_plan_rules():
    assert training.select_plan("float32") == training.TrainingPlan(
        "float32", True,
        "CPU: precision float32 requested -> float32, jit_compile=True, xla_fusion=False")
    bf16 = training.select_plan("mixed_bfloat16")
    assert (bf16.precision, bf16.jit_compile) == ("mixed_bfloat16", False)
    assert training.select_plan("float32", jit_compile=False).jit_compile is False
    assert training.select_plan("mixed_bfloat16", jit_compile=True).xla_fusion is False
    # Without a model to time, "auto" on a CPU is float32 + XLA (no probe decides it).
    auto = training.select_plan()
    assert (auto.precision, auto.jit_compile, auto.xla_fusion) == ("float32", True, False)


def test_select_plan_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"precision.*'float8'"):
        training.select_plan("float8")
    with pytest.raises(ValueError, match=r"jit_compile.*'yes'"):
        training.select_plan(jit_compile="yes")
    with pytest.raises(TypeError, match="TrainingPlan"):
        training.compile_model(_tiny_lm(), "float32")


def test_adamw_decays_matrices_but_not_vectors():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(keras.layers.Dense(3)(inputs)))
    plan = training.TrainingPlan("float32", False, "test")
    # A loss with zero gradient leaves weight decay as the only update.
    training.compile_model(model, plan, optimizer=training.adamw(0.1, weight_decay=0.5),
                           loss=lambda y, p: 0.0 * keras.ops.sum(p))
    model.get_layer(index=1).bias.assign(np.ones(3))
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(np.ones((2, 4)), np.zeros((2, 3)))
    after = [w.numpy() for w in model.trainable_weights]
    kernel, bias, gamma, beta = zip(before, after)
    np.testing.assert_allclose(kernel[1], kernel[0] * (1 - 0.1 * 0.5), rtol=1e-6)
    for old, new in (bias, gamma, beta):
        np.testing.assert_array_equal(new, old)


def test_the_default_loss_averages_over_the_weighted_positions_only(rng):
    """Padding (weight 0) must not dilute the loss: numpy's mean cross-entropy over the real tokens."""
    logits = rng.normal(size=(3, 5, 7)).astype("float32")
    labels = rng.integers(0, 7, size=(3, 5))
    weights = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], "float32")
    model = keras.Sequential([keras.Input((5, 7)), keras.layers.Identity()])
    training.compile_model(model, training.TrainingPlan("float32", False, "test"))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0][weights > 0].mean()
    loss = model.evaluate(logits, labels, sample_weight=weights, batch_size=3, verbose=0)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_xla_fusion_plan_trains_like_the_plain_bfloat16_plan(rng):
    ids = rng.integers(0, 20, size=(8, 9))
    losses = {}
    for fusion in (False, True):
        keras.utils.set_random_seed(5)
        plan = training.TrainingPlan("mixed_bfloat16", False, "test", xla_fusion=fusion)
        with plan.scope():
            model = _tiny_lm()
            training.compile_model(model, plan, optimizer=training.adamw(1e-2))
            assert tf.config.optimizer.get_jit() == ("autoclustering" if fusion else "")
            losses[fusion] = model.fit(ids[:, :-1], ids[:, 1:], epochs=5, verbose=0).history["loss"]
        assert tf.config.optimizer.get_jit() == ""  # the scope restored it
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)
    assert losses[True][-1] < losses[True][0]


def _lm_batch(rng, batch_size=8, length=8):
    ids = rng.integers(0, 20, size=(batch_size, length + 1)).astype("int32")
    return ids[:, :-1], ids[:, 1:]


def _build(plan):
    return training.compile_model(_tiny_lm(), plan, optimizer=training.adamw(1e-2))


def _fake_step_time(ms_per_step):
    """A step timer that says what the test wants, per precision (or (precision, jit_compile)), and records
    what it was asked."""
    asked = []

    def step_time(model, plan, batch, steps):
        asked.append((plan.precision, plan.jit_compile, model.get_layer("block_0").compute_dtype))
        return ms_per_step.get((plan.precision, plan.jit_compile), ms_per_step.get(plan.precision)) / 1e3

    step_time.asked = asked
    return step_time


@pytest.fixture
def bfloat16_cpu(monkeypatch):
    """A CPU with bfloat16 instructions, whatever this one has: both precisions are candidates."""
    monkeypatch.setattr(training, "cpu_bfloat16_instructions", lambda: True)


@pytest.mark.parametrize("faster", ["float32", "mixed_bfloat16"])
def test_choose_plan_keeps_the_faster_candidate_and_caches_it(tmp_path, rng, faster, bfloat16_cpu):
    timer = _fake_step_time({("float32", True): 10.0, ("float32", False): 15.0, "mixed_bfloat16": 20.0}
                            if faster == "float32" else {"float32": 30.0, "mixed_bfloat16": 12.0})
    lines, cache = [], tmp_path / "plans.json"
    batch = _lm_batch(rng)
    plan, model = training.choose_plan(_build, batch, cache_path=str(cache), step_time=timer,
                                       print_fn=lines.append)
    # Each candidate ran under its own plan: float32 with and without XLA, bfloat16 without.
    assert timer.asked == [("float32", True, "float32"), ("float32", False, "float32"),
                           ("mixed_bfloat16", False, "bfloat16")]
    assert plan.precision == faster and plan.jit_compile == (faster == "float32")
    assert model.get_layer("block_0").compute_dtype == ("float32" if faster == "float32" else "bfloat16")
    assert model.jit_compile is plan.jit_compile
    assert "float32 + XLA 10.0 ms/step" in lines[0] or "float32 + XLA 30.0 ms/step" in lines[0]
    assert lines[0].endswith(f"-> {faster}" + (" + XLA" if faster == "float32" else ""))
    saved = json.loads(cache.read_text())
    assert [entry["precision"] for entry in saved.values()] == [faster]
    # The cached choice is reused without timing anything.
    again, _ = training.choose_plan(_build, batch, cache_path=str(cache), step_time=_fail_if_called,
                                    print_fn=lines.append)
    assert (again.precision, again.jit_compile) == (plan.precision, plan.jit_compile)
    assert lines[-1].startswith(f"plan: cached in {cache}")


def _fail_if_called(*args):
    raise AssertionError("timed although the plan was cached or pinned")


def test_choose_plan_returns_the_winner_untrained_and_pinned_flags_skip_timing(tmp_path, rng, bfloat16_cpu):
    batch = _lm_batch(rng)
    keras.utils.set_random_seed(3)
    reference = _build(training.select_plan("mixed_bfloat16"))
    keras.utils.set_random_seed(3)
    plan, model = training.choose_plan(_build, batch, cache_path=False, print_fn=lambda line: None,
                                       step_time=lambda m, p, b, s: training._time_train_steps(m, p, b, s) * (
                                           100 if p.precision == "float32" else 1))
    assert plan.precision == "mixed_bfloat16"
    # The timed steps were undone: the winner starts from the first candidate's initial weights.
    assert int(model.optimizer.iterations.numpy()) == 0
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    pinned, _ = training.choose_plan(_build, batch, precision="float32", cache_path=str(tmp_path / "p.json"),
                                     step_time=_fail_if_called)
    assert (pinned.precision, pinned.jit_compile) == ("float32", True)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("xla_faster", [True, False])
def test_a_cpu_without_bfloat16_instructions_times_float32_with_and_without_xla_and_says_why(monkeypatch, rng,
                                                                                            xla_faster):
    monkeypatch.setattr(training, "cpu_bfloat16_instructions", lambda: False)
    timer = _fake_step_time({("float32", True): 10.0 if xla_faster else 30.0, ("float32", False): 20.0})
    lines = []
    plan, model = training.choose_plan(_build, _lm_batch(rng), cache_path=False, step_time=timer,
                                       print_fn=lines.append)
    assert timer.asked == [("float32", True, "float32"), ("float32", False, "float32")]
    assert (plan.precision, plan.jit_compile) == ("float32", xla_faster) and model.jit_compile is xla_faster
    assert "mixed_bfloat16 not timed: this CPU has no bfloat16 instructions" in lines[0]
    # With XLA pinned (or off) there is one candidate, and nothing is timed.
    pinned, _ = training.choose_plan(_build, _lm_batch(rng), jit_compile=True, cache_path=False,
                                     step_time=_fail_if_called, print_fn=lines.append)
    assert (pinned.precision, pinned.jit_compile) == ("float32", True)
    assert "mixed_bfloat16 not timed" in lines[-1]
    # Asking for bfloat16 still gets it.
    [forced] = training.candidate_plans("mixed_bfloat16")
    assert forced.precision == "mixed_bfloat16"


def test_cpu_bfloat16_instructions_reads_the_cpu_flags(monkeypatch, tmp_path):
    real_open = open

    def cpuinfo(flags):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda name, *a, **k: real_open(
            path if name == "/proc/cpuinfo" else name, *a, **k))

    cpuinfo("fpu sse avx2 fma avx512f")
    assert training.cpu_bfloat16_instructions() is False
    cpuinfo("fpu avx2 avx512f avx512_bf16")
    assert training.cpu_bfloat16_instructions() is True
    cpuinfo("fpu amx_tile amx_bf16")
    assert training.cpu_bfloat16_instructions() is True


def test_plan_cache_errors_name_the_file(tmp_path, rng, bfloat16_cpu):
    cache = tmp_path / "plans.json"
    cache.write_text("{not json")
    with pytest.raises(ValueError, match="plans.json.*not valid JSON"):
        training.choose_plan(_build, _lm_batch(rng), cache_path=str(cache), step_time=_fail_if_called)


def test_import_and_plans_leave_process_settings_as_they_were():
    """`import kerazoo` changes no environment variable or TensorFlow JIT setting; a plan's scope restores them."""
    code = textwrap.dedent("""
        import os
        import numpy as np
        import tensorflow as tf
        from tensorflow.python.client import _pywrap_tf_session as session
        environ, jit = dict(os.environ), tf.config.optimizer.get_jit()
        import kerazoo
        from kerazoo import models, training
        assert dict(os.environ) == environ, set(os.environ.items()) ^ set(environ.items())
        assert tf.config.optimizer.get_jit() == jit
        plan = training.select_plan("mixed_bfloat16")
        assert plan.xla_fusion, plan  # the user's TF_XLA_FLAGS restrict clustering to element-wise ops
        assert dict(os.environ) == environ
        with plan.scope():
            assert tf.config.optimizer.get_jit() == "autoclustering"
            model = models.transformer_lm(20, 8, 16, 2, 1, 32)
            training.compile_model(model, plan)
            ids = np.zeros((4, 9), "int32")
            model.fit(ids[:, :-1], ids[:, 1:], epochs=1, verbose=0)
        assert tf.config.optimizer.get_jit() == jit
        assert session.TF_SetTfXlaCpuGlobalJit(0) == 0  # CPU global JIT is off again
        assert dict(os.environ) == environ
        assert tf.keras.mixed_precision.global_policy().name == "float32"
        print("ok")
    """)
    env = dict(os.environ, TF_XLA_FLAGS="--tf_xla_ops_to_cluster=FUSIBLE")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_plan_says_when_xla_fusion_cannot_take_effect(monkeypatch):
    # In this process TensorFlow has long read TF_XLA_FLAGS, without the element-wise restriction.
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    plan = training.select_plan("mixed_bfloat16")
    assert not plan.xla_fusion
    assert "xla_fusion=False (needs TF_XLA_FLAGS=--tf_xla_ops_to_cluster=FUSIBLE" in plan.reason


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path, rng):
    x, y = _lm_batch(rng, batch_size=16)
    plan = training.TrainingPlan("float32", False, "test")

    def run(epochs, directory):
        keras.utils.set_random_seed(7)
        model = _build(plan)
        checkpoint = training.Checkpoint(directory, plan, print_fn=lines.append)
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[checkpoint])
        return model

    lines = []
    uninterrupted = run(4, tmp_path / "a")
    run(2, tmp_path / "b")  # "killed" after two epochs
    assert training.Checkpoint(tmp_path / "b").initial_epoch == 2
    resumed = run(4, tmp_path / "b")
    assert lines == [f"resumed from {tmp_path / 'b'}: 2 epochs done (optimizer step 4)"]
    assert int(resumed.optimizer.iterations.numpy()) == 8
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint.json", "epoch-00004.weights.h5", "plan.json"]
    assert training.Checkpoint.saved_plan(tmp_path / "b") == plan


def test_checkpoint_survives_sigkill_during_the_write(tmp_path, rng):
    """A process killed while writing its second checkpoint leaves the first one, whole, to resume from."""
    code = textwrap.dedent(f"""
        import os, signal
        import keras, numpy as np
        from kerazoo import models, training
        saves = []
        save_weights = keras.Model.save_weights
        def dying_save(self, path, *args, **kwargs):
            saves.append(path)
            save_weights(self, path, *args, **kwargs)
            if len(saves) == 2:  # the second checkpoint: half-written, then killed
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        keras.Model.save_weights = dying_save
        model = models.transformer_lm(20, 8, 16, 2, 1, 32)
        plan = training.TrainingPlan("float32", False, "test")
        training.compile_model(model, plan)
        ids = np.zeros((8, 9), "int32")
        model.fit(ids[:, :-1], ids[:, 1:], epochs=3, verbose=0,
                  callbacks=[training.Checkpoint({str(tmp_path)!r}, plan)])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    names = sorted(os.listdir(tmp_path))
    assert "epoch-00001.weights.h5" in names and any(n.startswith(".tmp-") for n in names), names
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 1
    model = _tiny_lm()
    training.compile_model(model, training.TrainingPlan("float32", False, "test"))
    lines = []
    x, y = _lm_batch(rng)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[training.Checkpoint(tmp_path, print_fn=lines.append)])
    assert lines[0].startswith(f"resumed from {tmp_path}: 1 epochs done")
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 2


def _lm_progress_fit(tmp_path, rng, logdir=None, total_steps=None, epochs=3):
    ids = rng.integers(0, 20, size=2000)
    stream = lambda seed: data.lm_dataset(ids, 8, 4, seed=seed)  # noqa: E731
    plan = training.TrainingPlan("float32", False, "test")
    model = training.compile_model(_tiny_lm(), plan, optimizer=training.adamw(0.0, weight_decay=0.0))
    progress = training.LanguageModelProgress(stream(1), stream(2), 3, 32, eval_batches=2,
                                              total_steps=total_steps, print_fn=lambda line: None)
    args = argparse.Namespace(logdir=logdir, checkpoint_dir=None)
    history = model.fit(stream(0), epochs=epochs, steps_per_epoch=3, verbose=0,
                        callbacks=[progress, *training.runtime_callbacks(args, plan)])
    return progress, history


def test_language_model_progress_draws_fresh_batches_and_logs_to_keras(tmp_path, rng):
    # A learning rate of 0 keeps the model fixed: the estimates differ only through their batches.
    progress, history = _lm_progress_fit(tmp_path, rng, total_steps=7)
    assert [h["step"] for h in progress.history] == [0, 3, 6, 7]  # the last interval is shorter
    train_losses = [h["train_loss"] for h in progress.history]
    assert len(set(train_losses)) == len(train_losses)
    assert history.history["val_loss"] == [h["val_loss"] for h in progress.history[1:]]
    assert history.history["train_loss"] == train_losses[1:]
    assert all(t > 0 for t in history.history["tokens_per_second"])
    assert progress.first_step_seconds > 0


def test_logdir_writes_tensorboard_scalars_and_the_plan(tmp_path, rng):
    _lm_progress_fit(tmp_path, rng, logdir=str(tmp_path / "tb"), epochs=2)
    tags = {}
    for path in glob.glob(str(tmp_path / "tb" / "*" / "events.out.tfevents.*")):
        run = os.path.basename(os.path.dirname(path))
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.setdefault(run, set()).update(value.tag for value in event.summary.value)
    assert {"epoch_loss", "epoch_learning_rate", "epoch_train_loss", "epoch_tokens_per_second"} <= tags["train"]
    assert {"epoch_loss", "epoch_perplexity"} <= tags["validation"]  # val_loss, val_perplexity
    assert "plan" in tags["plan"]


def test_quiet_logs_hide_descriptor_2_but_not_python_stderr(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    with training.quiet_logs(argparse.Namespace(verbose=0)):
        os.write(2, b"native line\n")
        print("python line", file=sys.stderr)
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "python line\nafter\n"
    for verbose, level in ((1, None), (0, "1")):  # --verbose, or the user's own TF_CPP_MIN_LOG_LEVEL
        if level:
            monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
        with training.quiet_logs(argparse.Namespace(verbose=verbose)):
            os.write(2, b"shown\n")
        assert capfd.readouterr().err == "shown\n"


@pytest.mark.slow
def test_lm_recipe_killed_mid_training_resumes_where_it_stopped(tmp_path, capsys):
    """SIGKILL the LM recipe after a few checkpoints; the same command resumes and ends like an uninterrupted run.

    Three recipe runs (about 20 s on 2 idle cores); the fast tests above check the same mechanism in-process
    and with a SIGKILL during a checkpoint write.
    """
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40)
    flags = ["--data", str(corpus), "--max-length", "16", "--d-model", "16", "--num-heads", "2", "--num-layers",
             "1", "--ff-dim", "32", "--batch-size", "4", "--max-steps", "105", "--eval-interval", "10",
             "--warmup-steps", "5", "--eval-batches", "1", "--sample-tokens", "3", "--precision", "float32",
             "--jit-compile", "off", "--no-export"]
    checkpoint = tmp_path / "ckpt"
    resumable = flags + ["--checkpoint-dir", str(checkpoint)]
    recipe = ROOT / "recipes" / "transformer_lm.py"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the recipe's own quiet default
    process = subprocess.Popen([sys.executable, str(recipe), *resumable], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    state = checkpoint / "checkpoint.json"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 3:
            break
        time.sleep(0.02)
    process.kill()
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    assert not re.search(r"^[IWEF]\d{4} ", err, re.M), err[-3000:]  # no TensorFlow C++ log lines by default
    epochs_done = json.loads(state.read_text())["epoch"]
    assert 3 <= epochs_done < 11
    spec = importlib.util.spec_from_file_location("transformer_lm", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(resumable) == 0
    resumed = capsys.readouterr().out
    assert f"resumed from {checkpoint}: {epochs_done} epochs done (optimizer step {epochs_done * 10})" in resumed
    assert module.main(flags) == 0
    uninterrupted = capsys.readouterr().out
    final = lambda out: float(re.search(r"done: 105 steps, val loss ([0-9.]+)", out).group(1))  # noqa: E731
    assert final(resumed) == pytest.approx(final(uninterrupted), abs=2e-3)
    steps = lambda out: re.findall(r"^step +(\d+):", out, re.M)  # noqa: E731
    assert steps(resumed)[0] == str(epochs_done * 10) and steps(resumed)[-1] == steps(uninterrupted)[-1] == "105"


def test_a_resumed_run_keeps_the_plan_saved_with_its_checkpoint(tmp_path):
    saved = training.TrainingPlan("mixed_bfloat16", False, "timed earlier")
    training.write_json_atomically(tmp_path / "plan.json", saved.to_dict())
    lines = []
    args = argparse.Namespace(precision="auto", jit_compile="auto", checkpoint_dir=str(tmp_path))
    plan, model = training.plan_from_flags(args, print_fn=lines.append)
    assert (plan.precision, plan.jit_compile, model) == ("mixed_bfloat16", False, None)
    assert lines == [f"plan: from the checkpoint in {tmp_path}: timed earlier"]
    args.precision = "float32"  # flags that pin a plan win over the saved one
    assert training.plan_from_flags(args, print_fn=lines.append)[0].precision == "float32"


def test_with_precision_rebuilds_a_saved_mixed_model_in_the_plans_precision(tmp_path):
    def inputs():
        return {"token_ids": np.array([[2, 7, 9, 3, 0]]), "segment_ids": np.zeros((1, 5), "int32"),
                "padding_mask": np.array([[1, 1, 1, 1, 0]])}

    keras.utils.set_random_seed(0)
    with training.TrainingPlan("mixed_bfloat16", False, "test").policy_scope():
        mixed = models.bert_backbone(20, max_length=8, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    mixed.save(tmp_path / "mixed.keras")
    loaded = keras.models.load_model(tmp_path / "mixed.keras")  # loads in bfloat16 whatever the global policy
    assert loaded.get_layer("block_0").dtype_policy.name == "mixed_bfloat16"
    as_float = training.with_precision(loaded, "float32")
    assert {layer.dtype_policy.name for layer in as_float._flatten_layers(include_self=False)} == {"float32"}
    # The oracle: the same architecture built in float32 from the start, given the same weights.
    with training.TrainingPlan("float32", False, "test").policy_scope():
        reference = models.bert_backbone(20, max_length=8, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    reference.set_weights(mixed.get_weights())
    for name, value in as_float(inputs()).items():
        assert value.dtype == "float32"
        np.testing.assert_allclose(value, reference(inputs())[name], atol=1e-6)
    assert loaded(inputs())["sequence_output"].dtype == "bfloat16"
    for a, b in zip(as_float.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert training.with_precision(as_float, "float32") is as_float
    back = training.with_precision(as_float, "mixed_bfloat16")
    assert back(inputs())["pooled_output"].dtype == "bfloat16"
