"""The kerazoo console script: recipes, inspect, predict, and its errors."""

import io
import json

import keras
import pytest

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
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert cli.main(["predict", str(exported), "-", "--json"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == ["one", "two"]


def test_errors_are_one_line_with_exit_status_2(capsys, tmp_path):
    assert cli.main(["predict", str(tmp_path / "missing"), "x"]) == 2
    assert capsys.readouterr().err.strip() == f"kerazoo predict: error: '{tmp_path / 'missing'}' does not exist"
    (tmp_path / "empty").mkdir()
    assert cli.main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no saved_model.pb and no integer version folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["predict", str(tmp_path)])  # argparse: texts are required
