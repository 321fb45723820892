"""The kerazoo console script: recipes, inspect, predict, and its errors."""

import io
import json
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from kerazoo import cli, export, models, text


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    vectorizer = text.word_vectorizer(vocab_size=20, max_length=6)
    vectorizer.adapt(["a good film", "a bad film"])
    keras.utils.set_random_seed(0)
    model = models.lstm_classifier(vocab_size=20, max_length=6, embedding_dim=4, lstm_units=4)
    export.export_saved_model(model, base, "clf", preprocessor=vectorizer)
    export.export_saved_model(model, base, "clf", preprocessor=vectorizer)
    return base / "clf"


def test_recipes_lists_every_recipe(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("lstm_classifier", "transformer_lm", "smoke"):
        assert name in out
    assert "Train the documents' Embedding" in out


def test_inspect_shows_versions_and_signature(capsys, exported):
    assert cli.main(["inspect", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "versions: 1, 2 (TF Serving serves 2)" in out
    assert "input  text: string [None]" in out
    assert "output probabilities: float32 [None]" in out and "output label: int64 [None]" in out


def test_predict_table_json_and_stdin(capsys, exported, monkeypatch):
    assert cli.main(["predict", str(exported), "a good film", "bad"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["text", "label", "probabilities"] and len(lines) == 3
    assert cli.main(["predict", str(exported / "1"), "--json", "a good film"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == "a good film" and 0 <= row["probabilities"] <= 1 and row["label"] in (0, 1)
    monkeypatch.setattr("sys.stdin", io.StringIO("one\r\n\n  \r\ntwo\r\n\n"))  # CRLF, blank lines
    assert cli.main(["predict", str(exported), "-", "--json"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["one", "two"]


def test_predict_and_inspect_a_wordpiece_generator_in_a_fresh_process(tmp_path):
    corpus = ["the cat sat on the mat", "the dog sat on the log"] * 3
    tokenizer = text.WordPieceTokenizer.learn(corpus, vocab_size=50)
    model = models.transformer_lm(tokenizer.vocabulary_size, max_length=12, d_model=8, num_heads=2,
                                  num_layers=1, ff_dim=16)
    export.export_text_generator(model, tokenizer, tmp_path, "lm", max_new_tokens=3)
    # A fresh process: nothing has imported tensorflow_text (whose kernels WordPiece exports need).
    run = [sys.executable, "-c", "import sys; from kerazoo import cli; sys.exit(cli.main(sys.argv[1:]))"]
    inspected = subprocess.run(run + ["inspect", str(tmp_path / "lm")], capture_output=True, text=True,
                               timeout=300)
    assert inspected.returncode == 0, inspected.stderr[-2000:]
    assert "signature 'next_token_logits'" in inspected.stdout
    predicted = subprocess.run(run + ["predict", str(tmp_path / "lm"), "--json", "the cat"],
                               capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    row = json.loads(predicted.stdout)
    assert row["prompt"] == "the cat" and len(row["token_ids"]) == 3 and isinstance(row["text"], str)


def test_errors_are_one_line_with_exit_status_2(capsys, tmp_path):
    assert cli.main(["predict", str(tmp_path / "missing"), "x"]) == 2
    assert capsys.readouterr().err.strip() == f"kerazoo predict: error: '{tmp_path / 'missing'}' does not exist"
    (tmp_path / "empty").mkdir()
    assert cli.main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no saved_model.pb and no integer version folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tmp_path)])  # argparse: texts are required


def test_load_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a protobuf")
    assert cli.main(["inspect", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kerazoo inspect: error: '{tmp_path / 'broken' / '1'}' could not be loaded as a "
                          "SavedModel: ") and err.count("\n") == 1
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "floats"), signatures={"serving_default": module.double})
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"double": module.double})
    for folder, message in (("floats", "does not take one string input (it takes x: float32)"),
                            ("other", "has no 'serving_default' signature (it has: double)")):
        assert cli.main(["predict", str(tmp_path / folder), "a"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
