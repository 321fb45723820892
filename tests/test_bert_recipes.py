"""The BERT recipes: flag errors before any work; pretrain → fine-tune → export end to end (slow)."""

import importlib.util
import json
import os
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import models, training
from tf_only import assert_no_xla, run_tf_only

RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe,argv,message", [
    ("bert_pretrain", ["--max-length", "3"], "--max-length must be a finite number in [4, inf]; received 3"),
    ("bert_pretrain", ["--max-steps", "10", "--warmup-steps", "10"], "--warmup-steps must be"),
    ("bert_pretrain", ["--segment-words", "-1"], "--segment-words must be a finite number in [0, inf]; received -1"),
    ("bert_pretrain", ["--d-model", "30", "--num-heads", "4"], "--d-model 30 is not divisible by --num-heads 4"),
    ("bert_finetune", ["--mode", "top-k", "--top-k", "0"], "--top-k must be an integer >= 1; received 0"),
    ("bert_finetune", ["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    ("bert_finetune", ["--encoder-dropout", "1"], "--encoder-dropout must be a finite number in [0, 1); received 1"),
    ("bert_finetune", ["--pretrained", "x", "--from-scratch"], "not allowed with argument"),
    ("bert_finetune", ["--name", "../escape"], "--name must be a single folder name"),
])
def test_bad_flags_are_one_line_errors(capsys, recipe, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _load(recipe).parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_finetune_without_a_pretrained_encoder_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="backbone.keras not found: run recipes/bert_pretrain.py"):
        _load("bert_finetune").main(["--pretrained", str(tmp_path / "none"), "--export-dir", str(tmp_path)])


def test_finetune_from_scratch_times_its_plan_and_exports(tmp_path, capsys):
    assert _load("bert_finetune").main([
        "--from-scratch", "--vocab-size", "150", "--max-length", "16", "--d-model", "16", "--num-heads", "2",
        "--num-layers", "1", "--ff-dim", "32", "--max-train-examples", "64", "--validation-split", "0.02",
        "--batch-size", "16", "--epochs", "1", "--export-dir", str(tmp_path), "--name", "tiny", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^plan: (timed \d+ steps of this model|.*mixed_bfloat16 not timed)", out, re.M), out
    assert "parameters train (" in out and "confusion matrix" in out
    assert os.listdir(tmp_path / "tiny") == ["1"]


def test_finetune_gives_a_pretrained_encoder_the_encoder_dropout(tmp_path):
    """A pretrained encoder keeps its own dropout (0 from bert_pretrain) unless --encoder-dropout sets one."""
    backbone = models.bert_backbone(30, max_length=8, d_model=8, num_heads=2, num_layers=1, ff_dim=16, dropout=0.0)
    backbone.save(tmp_path / "backbone.keras")
    for name in ("vocabulary.json", "pretraining.json"):
        (tmp_path / name).write_text("{}")  # present, as _pretrained_files requires; the backbone is all that loads
    finetune = _load("bert_finetune")
    for argv, rate in (([], 0.0), (["--encoder-dropout", "0.25"], 0.25)):
        args = finetune.parse_args(["--pretrained", str(tmp_path), *argv])
        loaded = finetune.load_backbone(args, None, training.TrainingPlan("float32", False, "test"))
        assert {layer.rate for layer in loaded._flatten_layers() if isinstance(layer, keras.layers.Dropout)} == {rate}
        assert len(loaded.weights) == len(backbone.weights)
        for a, b in zip(loaded.get_weights(), backbone.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_pretrain_resumed_from_a_checkpoint_stops_at_max_steps(tmp_path, capsys):
    """A run resumed after one 10-step interval counts those steps and trains 5 more, not another whole interval."""
    flags = ["--output-dir", str(tmp_path / "out"), "--vocab-size", "300", "--max-length", "32", "--d-model", "16",
             "--num-heads", "2", "--num-layers", "1", "--ff-dim", "32", "--batch-size", "8", "--log-every", "10",
             "--max-predictions", "5", "--precision", "float32", "--jit-compile", "off",
             "--checkpoint-dir", str(tmp_path / "ckpt")]
    pretrain = _load("bert_pretrain")
    assert pretrain.main(flags + ["--max-steps", "10", "--warmup-steps", "2"]) == 0
    capsys.readouterr()
    assert pretrain.main(flags + ["--max-steps", "15", "--warmup-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 epochs done (optimizer step 10)" in out, out
    assert "segment (up to 9 words) pairs" in out  # the default for --max-length 32
    assert re.findall(r"^step +(\d+): ", out, re.M) == ["15"] and "trained 15 steps" in out, out
    assert json.loads((tmp_path / "out" / "pretraining.json").read_text())["steps"] == 15


@pytest.mark.slow
def test_pretrain_then_finetune_then_serve(tmp_path, capsys):
    pretrained = tmp_path / "pretrained"
    assert _load("bert_pretrain").main([
        "--output-dir", str(pretrained), "--vocab-size", "300", "--max-length", "32", "--d-model", "32",
        "--num-heads", "2", "--num-layers", "2", "--ff-dim", "64", "--batch-size", "8", "--max-steps", "15",
        "--log-every", "10", "--max-predictions", "5"]) == 0
    out = capsys.readouterr().out
    assert "trained 15 steps" in out  # a last, shorter log interval: --max-steps is not rounded up to 20
    assert json.loads((pretrained / "pretraining.json").read_text())["steps"] == 15
    assert "mlm acc" in out and "nsp acc" in out and "held-out pairs" in out and "plan:" in out
    assert sorted(os.listdir(pretrained)) == ["backbone.keras", "pretraining.json", "vocabulary.json"]
    for mode in ("full", "frozen", "top-k"):
        assert _load("bert_finetune").main([
            "--pretrained", str(pretrained), "--mode", mode, "--top-k", "1", "--epochs", "1",
            "--max-train-examples", "256", "--export-dir", str(tmp_path / "out"), "--name", "sentiment",
            "--verbose", "0", "--report", str(tmp_path / f"{mode}.json")]) == 0
        out = capsys.readouterr().out
        assert "confusion matrix" in out and "predictions of the exported SavedModel" in out
        assert json.loads((tmp_path / f"{mode}.json").read_text())["mode"] == mode
    assert sorted(os.listdir(tmp_path / "out" / "sentiment")) == ["1", "2", "3"]
    assert_no_xla(tmp_path / "out" / "sentiment" / "3")
    strings = ["a good film", "", "très bien 😀", " ".join(["dull"] * 3000)]
    expected = keras.models.load_model(tmp_path / "out" / "sentiment.keras").predict(tf.constant(strings), verbose=0)
    result = run_tf_only(f"""
        serving = tf.saved_model.load(newest_version({str(tmp_path / "out" / "sentiment")!r})).signatures["serving_default"]
        print(serving(text=tf.constant({strings!r}))["probabilities"].numpy().tolist())
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(result.stdout.splitlines()[0]), expected, atol=1e-5)
