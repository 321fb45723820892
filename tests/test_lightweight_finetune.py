"""recipes/lightweight_finetune.py: method names and flags, one method in process, the table and chart."""

import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from kerazoo import data, models, text

RECIPE = pathlib.Path(__file__).resolve().parent.parent / "recipes" / "lightweight_finetune.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("lightweight_finetune", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny "pretrained" encoder folder, as recipes/bert_pretrain.py writes it."""
    folder = tmp_path_factory.mktemp("pretrained")
    tokenizer = text.learn_bert_vocabulary(data.load_dataset("sample").texts[:400], vocab_size=150)
    tokenizer.save_vocabulary(str(folder / "vocabulary.json"))
    models.bert_backbone(tokenizer.vocabulary_size, max_length=32, d_model=16, num_heads=2, num_layers=2,
                         ff_dim=32).save(folder / "backbone.keras")
    (folder / "pretraining.json").write_text(json.dumps({"lower_case": True, "max_length": 32}))
    return folder


@pytest.mark.parametrize("argv,message", [
    (["--methods", "lora-x"], "unknown method 'lora-x'"),
    (["--methods", "full+gan"], "unknown method 'full+gan'"),
    (["--methods", " , "], "--methods is empty"),
    (["--epsilon", "0"], "--epsilon must be"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
])
def test_bad_flags_are_one_line_errors(recipe, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_method_names(recipe):
    assert recipe.parse_method("lora-8+fgm") == ("lora", 8, "fgm")
    assert recipe.parse_method("top-2") == ("top", 2, None)
    assert recipe.parse_method("full") == ("full", None, None)


def test_one_method_is_scored_and_the_table_and_chart_are_written(recipe, pretrained, tmp_path):
    args = recipe.parse_args(["--pretrained", str(pretrained), "--max-train-examples", "64", "--steps", "3",
                              "--batch-size", "8", "--out-dir", str(tmp_path), "--jit-compile", "off"])
    lora = recipe.run_method(args, "lora-2+fgm", print_fn=None)
    assert 0 <= lora["accuracy"] <= 1 and 0 <= lora["typo_accuracy"] <= 1
    assert lora["seconds_per_step"] > 0 and lora["peak_memory_mb"] > 0
    assert lora["shipped_bytes"] == (tmp_path / "lora-2+fgm.npz").stat().st_size
    head = 16 * 16 + 16 + 16 * 2 + 2  # pooler and classifier
    assert lora["trainable"] == head + 2 * 2 * ((16 + 48) + (16 + 16))  # 2 blocks: QKV and output factors
    assert lora["shipped_bytes"] < lora["model_bytes"] / 2
    other = dict(lora, method="full", accuracy=0.5)
    markdown = recipe.write_outputs([lora, other], str(tmp_path), "test")
    assert "| lora-2+fgm |" in markdown and (tmp_path / "results.md").read_text() == markdown
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["method"] for r in rows] == ["lora-2+fgm", "full"] and list(rows[0]) == list(recipe.COLUMNS)
    np.testing.assert_allclose(float(rows[0]["accuracy"]), lora["accuracy"])
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_recipe_runs_each_method_in_its_own_process(recipe, pretrained, tmp_path):
    assert recipe.main(["--pretrained", str(pretrained), "--max-train-examples", "64", "--steps", "2",
                        "--batch-size", "8", "--out-dir", str(tmp_path), "--methods", "full,prompt-2"]) == 0
    assert [r["method"] for r in csv.DictReader(open(tmp_path / "results.csv"))] == ["full", "prompt-2"]


def test_typos_hit_the_requested_share_of_words_with_one_edit_each():
    from kerazoo.evaluation import add_typos

    texts = [" ".join(f"word{i}x{j}" for j in range(20)) for i in range(100)]
    noisy = add_typos(texts, word_fraction=0.1, seed=3)
    assert noisy == add_typos(texts, word_fraction=0.1, seed=3) and noisy != add_typos(texts, 0.1, seed=4)
    pairs = [(a, b) for t, n in zip(texts, noisy) for a, b in zip(t.split(), n.split())]
    changed = [(a, b) for a, b in pairs if a != b]
    assert 0.07 < len(changed) / len(pairs) < 0.13
    for a, b in changed:  # one deletion, insertion, substitution or adjacent swap
        assert abs(len(a) - len(b)) <= 1 and (len(a) != len(b) or sum(x != y for x, y in zip(a, b)) <= 2)
    assert add_typos(texts, 0.0) == texts
    with pytest.raises(ValueError, match="word_fraction"):
        add_typos(texts, 1.5)
