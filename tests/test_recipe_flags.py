"""Recipe flag checks: each names the flag and the value; export destinations never lead outside EXPORT_DIR."""

import argparse
import os
import re

import keras
import numpy as np
import pytest

from kerazoo import nonfinite, recipe_flags, training


def _args(**values):
    return argparse.Namespace(**values)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, None])
def test_positive_rejects_non_positive_integers(value):
    with pytest.raises(ValueError, match=rf"^--batch-size must be an integer >= 1; received {value!r}$"):
        recipe_flags.positive(_args(batch_size=value), "batch_size")


def test_positive_accepts_and_names_the_first_bad_flag():
    recipe_flags.positive(_args(a=1, b=10**9), "a", "b")
    with pytest.raises(ValueError, match="--max-steps"):
        recipe_flags.positive(_args(epochs=1, max_steps=0), "epochs", "max_steps")


@pytest.mark.parametrize("value, message", [
    (float("nan"), r"--learning-rate must be a finite number in \(0, inf\]; received nan"),
    (float("inf"), r"received inf"),
    (-1.0, r"received -1.0"),
    (0.0, r"received 0.0"),
])
def test_in_range_rejects_non_finite_and_out_of_bounds(value, message):
    with pytest.raises(ValueError, match=message):
        recipe_flags.in_range(_args(learning_rate=value), "learning_rate", low=0, low_open=True)


def test_in_range_bounds_are_inclusive_unless_open():
    recipe_flags.in_range(_args(dropout=0.0), "dropout", 0, 1, high_open=True)
    with pytest.raises(ValueError, match=r"--dropout must be a finite number in \[0, 1\); received 1.0"):
        recipe_flags.in_range(_args(dropout=1.0), "dropout", 0, 1, high_open=True)
    recipe_flags.in_range(_args(seed=2 ** 32 - 1), "seed", 0, 2 ** 32 - 1)


@pytest.mark.parametrize("name", ["../escape", ".", "..", "a/b", "", "/abs", ".hidden", "a\\b", "a b", "x\n",
                                  None])
def test_export_destination_rejects_names_that_are_not_one_folder(tmp_path, name):
    with pytest.raises(ValueError, match="--name must be a single folder name .*received " + re.escape(repr(name))):
        recipe_flags.export_destination(tmp_path / "out", name)
    assert os.listdir(tmp_path) == []


def test_export_destination_paths_stay_inside_and_nothing_is_created(tmp_path):
    paths = recipe_flags.export_destination(tmp_path / "new" / "deeper", "lm.v2",
                                            suffixes=(".keras", ".vocabulary.json"))
    assert paths == {"model_dir": str(tmp_path / "new" / "deeper" / "lm.v2"),
                     ".keras": str(tmp_path / "new" / "deeper" / "lm.v2.keras"),
                     ".vocabulary.json": str(tmp_path / "new" / "deeper" / "lm.v2.vocabulary.json")}
    assert os.listdir(tmp_path) == []


def test_export_destination_rejects_files_and_wrong_kinds(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"^--export-dir '.*file' is not a directory$"):
        recipe_flags.export_destination(a_file, "m")
    with pytest.raises(ValueError, match=r"--export-dir '.*file/sub' is inside '.*file', which is not a directory"):
        recipe_flags.export_destination(a_file / "sub", "m")
    (tmp_path / "m").write_text("not a folder")
    with pytest.raises(ValueError, match=r"'.*/m' exists and is not a directory: .* another --name"):
        recipe_flags.export_destination(tmp_path, "m")
    (tmp_path / "n.keras").mkdir()
    with pytest.raises(ValueError, match=r"'.*/n.keras' exists and is not a file"):
        recipe_flags.export_destination(tmp_path, "n")
    os.symlink(tmp_path.parent, tmp_path / "o")
    with pytest.raises(ValueError, match=r"'.*/o' is a symbolic link; exports write only inside --export-dir"):
        recipe_flags.export_destination(tmp_path, "o")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_export_destination_rejects_an_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"--export-dir '.*locked/out': no permission to write in '.*locked'"):
            recipe_flags.export_destination(locked / "out", "m")
    finally:
        locked.chmod(0o700)


def test_parse_args_turns_errors_into_a_one_line_usage_error(capsys):
    parser = argparse.ArgumentParser(prog="recipe")
    parser.add_argument("--name", default="m")
    parser.add_argument("--export-dir", default="out")

    def check(args):
        recipe_flags.export_destination(args.export_dir, args.name)

    with pytest.raises(SystemExit) as exit_info:
        recipe_flags.parse_args(parser, ["--name", "../escape"], check)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "recipe: error: --name must be a single folder name (letters, digits, '.', '_', '-', starting with a "
        "letter or digit); received '../escape'")


def test_sampling_settings_against_the_vocabulary_and_context():
    recipe_flags.top_k_within(8, vocab_size=8)
    with pytest.raises(ValueError, match=r"--top-k must be an integer in \[1, 8\] \(the vocabulary size\); "
                                         r"received 10"):
        recipe_flags.top_k_within(10, vocab_size=8)
    assert recipe_flags.room_for_prompt(3, 100, max_length=8) == 5
    assert recipe_flags.room_for_prompt(3, 2, max_length=8) == 2
    with pytest.raises(ValueError, match=r"--prompt has 4 tokens, which leaves no room in the 4-token context"):
        recipe_flags.room_for_prompt(4, 10, max_length=4)


def test_exit_on_gives_a_one_line_error():
    with pytest.raises(SystemExit, match=r"^error: --top-k must be"):
        with recipe_flags.exit_on(ValueError):
            recipe_flags.top_k_within(0, vocab_size=8)
    with pytest.raises(KeyError):  # other errors pass through
        with recipe_flags.exit_on(ValueError):
            raise KeyError("x")


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    return model


def test_non_finite_guard_stops_at_the_first_nan_loss_and_refuses_the_model():
    model = _tiny_model()
    x = np.ones((64, 3), "float32")
    y = np.ones((64, 1), "float32")
    y[20] = np.nan  # batch 3 of 8-sample batches
    guard = nonfinite.NonFiniteGuard()
    history = model.fit(x, y, batch_size=8, epochs=5, callbacks=[guard], verbose=0,
                        shuffle=False)
    assert guard.diverged == "loss = nan at epoch 1, step 3"
    assert len(history.history["loss"]) == 1  # stopped in the first epoch
    with pytest.raises(FloatingPointError, match=r"training diverged \(loss = nan at epoch 1, step 3\); "
                                                 r"stopped there, and nothing was saved or exported"):
        guard.check(model)


def test_non_finite_guard_passes_a_healthy_run_and_checks_weights():
    model = _tiny_model()
    guard = nonfinite.NonFiniteGuard()
    model.fit(np.ones((16, 3), "float32"), np.zeros((16, 1), "float32"), epochs=2, callbacks=[guard],
              verbose=0)
    assert guard.diverged is None
    guard.check(model)
    kernel = model.layers[0].kernel
    kernel.assign(np.array([[1.0], [np.inf], [np.nan]], "float32"))
    with pytest.raises(FloatingPointError, match=r"weight '.*kernel' holds 2 non-finite values"):
        guard.check()


def test_a_diverged_epoch_never_replaces_the_last_good_checkpoint(tmp_path):
    x, y = np.ones((16, 3), "float32"), np.zeros((16, 1), "float32")
    model = _tiny_model()
    model.fit(x, y, epochs=1, callbacks=[training.Checkpoint(tmp_path, print_fn=print)], verbose=0)
    good = [w.copy() for w in model.get_weights()]
    y[5] = np.nan
    lines, guard = [], nonfinite.NonFiniteGuard()
    model.fit(x, y, epochs=3, callbacks=[guard, training.Checkpoint(tmp_path, print_fn=lines.append)], verbose=0,
              shuffle=False)
    assert guard.diverged == "loss = nan at epoch 2, step 1"  # resumed after epoch 1
    assert lines[-1].startswith("checkpoint of epoch 2 not saved: weight") and "keeps the last good one" in lines[-1]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", "epoch-00001.weights.h5"]
    model.load_weights(tmp_path / "epoch-00001.weights.h5")  # the checkpoint still holds epoch 1's weights
    for a, b in zip(model.get_weights(), good):
        np.testing.assert_array_equal(a, b)
