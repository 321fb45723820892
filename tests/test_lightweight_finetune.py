"""recipes/lightweight_finetune.py: method names and flags, one method in process, the table and chart."""

import csv
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from kerazoo import data, finetune, models, text, training

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
    (["--methods", "lora-8-mlp"], "unknown method 'lora-8-mlp'"),
    (["--methods", "top-2-all"], "unknown method 'top-2-all'"),
    (["--methods", "full,lora-2,full"], "--methods names a method twice"),
    (["--methods", "full", "--method-learning-rate", "lora-8=1e-3"], "'lora-8' is not one of --methods"),
    (["--methods", "full", "--method-learning-rate", "full=fast"], "received 'fast'"),
    (["--methods", "full", "--method-learning-rate", "full=-1"], "received '-1'"),
    (["--select-rate-factors", " , "], "--select-rate-factors is empty"),
    (["--select-rate-factors", "1,0"], "received '0'"),
    (["--seeds", "0"], "--seeds must be an integer >= 1"),
    (["--selection-fraction", "1"], "--selection-fraction must be"),
])
def test_bad_flags_are_one_line_errors(recipe, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_method_names(recipe):
    assert recipe.parse_method("lora-8+fgm") == ("lora", 8, ("qkv", "attention_output"), None, "fgm")
    assert recipe.parse_method("lora-4-all") == ("lora", 4, ("qkv", "attention_output", "ff_inner", "ff_output"),
                                                 None, None)
    assert recipe.parse_method("lora-4-ffn+pgd").targets == ("ff_inner", "ff_output")
    assert recipe.parse_method("lora-4-emb2") == ("lora", 4, ("qkv", "attention_output"), 2, None)
    assert recipe.parse_method("lora-8-qkv-emb16+fgm") == ("lora", 8, ("qkv",), 16, "fgm")
    assert recipe.parse_method("top-2") == ("top", 2, None, None, None)
    assert recipe.parse_method("full") == ("full", None, None, None, None)
    for unknown in ("lora-4-emb0", "lora-4-emb", "lora-4-emb2-all", "lora-4-all-attn", "top-2-emb2", "full-emb2"):
        with pytest.raises(ValueError, match="unknown method"):
            recipe.parse_method(unknown)


def test_each_method_gets_its_groups_rate_unless_named_or_chosen(recipe):
    args = recipe.parse_args(["--methods", "full,top-2,head,lora-8,adapters-4,prompt-3", "--learning-rate", "1e-4",
                              "--adapter-learning-rate", "2e-3", "--prompt-learning-rate", "3e-2",
                              "--method-learning-rate", "lora-8=5e-4", "--method-learning-rate", " top-2 = 7e-5"])
    assert {m: recipe.learning_rate(args, m) for m in args.method_list} == {
        "full": 1e-4, "top-2": 7e-5, "head": 2e-3, "lora-8": 5e-4, "adapters-4": 2e-3, "prompt-3": 3e-2}
    args.rate = 9e-4  # a chosen rate wins
    assert recipe.learning_rate(args, "lora-8") == recipe.learning_rate(args, "full") == 9e-4


def test_lora_target_sets_train_their_factors(recipe, pretrained):
    import keras

    backbone = keras.models.load_model(pretrained / "backbone.keras")
    head = 16 * 16 + 16 + 16 * 2 + 2  # pooler and classifier
    per_rank = {"attn": (16 + 48) + (16 + 16), "qkv": 16 + 48, "ffn": (16 + 32) + (32 + 16),
                "all": (16 + 48) + (16 + 16) + (16 + 32) + (32 + 16)}  # d_model 16, ff_dim 32
    for target_set, factors in per_rank.items():
        classifier = models.bert_classifier(keras.models.clone_model(backbone), 2)
        model = recipe.prepare(classifier, f"lora-3-{target_set}")
        assert finetune.trainable_report(model, print_fn=None).trainable == head + 2 * 3 * factors, target_set
    classifier = models.bert_classifier(keras.models.clone_model(backbone), 2)
    model = recipe.prepare(classifier, "lora-3-qkv-emb2")
    vocab = backbone.get_layer("embedding").vocab_size
    assert finetune.trainable_report(model, print_fn=None).trainable == head + 2 * 3 * (16 + 48) + 2 * (vocab + 16)


def test_one_method_is_scored_and_the_table_and_chart_are_written(recipe, pretrained, tmp_path):
    args = recipe.parse_args(["--pretrained", str(pretrained), "--max-train-examples", "64", "--steps", "3",
                              "--batch-size", "8", "--out-dir", str(tmp_path), "--jit-compile", "off"])
    lora = recipe.run_method(args, "lora-2+fgm", print_fn=None)
    assert lora["seed"] == 0 and lora["learning_rate"] == 1e-3
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


def _run(method, seed, accuracy, rate=1e-3, **scores):
    return dict(method=method, seed=seed, learning_rate=rate, trainable=10, trainable_percent=1.0, accuracy=accuracy,
                f1=scores.get("f1", accuracy), typo_accuracy=scores.get("typo_accuracy", accuracy),
                seconds_per_step=scores.get("seconds_per_step", 0.1), peak_memory_mb=100.0, shipped_bytes=1024,
                shipped_percent=1.0, model_bytes=102400)


def test_seeds_are_summarized_and_paired_against_the_first_method(recipe, tmp_path):
    full, lora = [0.80, 0.84, 0.83], [0.79, 0.80, 0.85]
    results = [_run("full", s, a, seconds_per_step=t) for s, a, t in zip((5, 6, 7), full, (0.3, 0.1, 0.2))] + \
        [_run("lora-8", s, lora[s - 5]) for s in (7, 5, 6)]  # out of seed order on purpose
    rows = recipe.summarize(results)
    assert [r["method"] for r in rows] == ["full", "lora-8"] and rows[0]["runs"] == 3
    np.testing.assert_allclose([rows[0]["accuracy_mean"], rows[0]["accuracy_sd"]], [np.mean(full),
                                                                                      np.std(full, ddof=1)])
    assert rows[0]["seconds_per_step"] == 0.2  # the median
    mean, sd, per_seed = recipe.paired_differences(results, "full")["lora-8"]
    difference = np.array(lora) - np.array(full)  # seeds 5, 6, 7
    np.testing.assert_allclose(per_seed, difference)
    np.testing.assert_allclose([mean, sd], [difference.mean(), difference.std(ddof=1)])
    markdown = recipe.write_outputs(results, str(tmp_path), "three seeds")
    assert f"{np.mean(full):.4f} ± {np.std(full, ddof=1):.4f}" in markdown
    assert f"| lora-8 | {difference.mean():+.4f} ± {difference.std(ddof=1):.4f} | " in markdown
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 6


def test_the_chosen_rate_has_the_best_mean_held_out_accuracy_and_ties_go_low(recipe):
    selection = [_run("full", 0, 0.70, 1e-4), _run("full", 1, 0.80, 1e-4), _run("full", 0, 0.76, 3e-4),
                 _run("full", 1, 0.76, 3e-4), _run("lora-8", 0, 0.70, 3e-3), _run("lora-8", 0, 0.70, 1e-3),
                 _run("lora-8", 0, 0.60, 1e-2)]
    assert recipe.choose_rates(selection) == {"full": 3e-4, "lora-8": 1e-3}


def test_a_stopped_comparison_run_again_reuses_the_runs_that_finished(recipe, pretrained, tmp_path, monkeypatch,
                                                                       capsys):
    """The parent's side: each child (faked: flags in, a result JSON out) is kept as it finishes; the same
    command again runs only what is missing, and other flags are other runs."""
    calls, failing = [], {"prompt-2"}

    def child_process(command):
        flags = command[2:]
        method = flags[flags.index("--only") + 1]
        if method in failing:
            return type("Completed", (), {"returncode": 1})
        calls.append(method)
        result = flags[flags.index("--result") + 1]
        assert not result.startswith(str(tmp_path))  # a run killed here leaves nothing in OUT_DIR
        training.write_json_atomically(result, dict(_run(method, 0, 0.5), plan="p"))
        return type("Completed", (), {"returncode": 0})

    monkeypatch.setattr(recipe.subprocess, "run", child_process)
    argv = ["--pretrained", str(pretrained), "--max-train-examples", "48", "--steps", "1", "--batch-size", "8",
            "--out-dir", str(tmp_path), "--methods", "head,prompt-2"]
    with pytest.raises(SystemExit, match="method prompt-2 failed"):
        recipe.main(argv)
    assert calls == ["head"] and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["head.seed0.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    failing.clear()
    capsys.readouterr()
    assert recipe.main(argv) == 0
    assert calls == ["head", "prompt-2"]
    assert f"--- head, seed 0: done before, reusing {tmp_path / 'runs' / 'head.seed0.json'}" in capsys.readouterr().out
    assert [r["method"] for r in csv.DictReader(open(tmp_path / "results.csv"))] == ["head", "prompt-2"]
    assert recipe.main(argv[:5] + ["2"] + argv[6:]) == 0  # --steps 2: both run again
    assert calls == ["head", "prompt-2", "head", "prompt-2"]


@pytest.mark.slow  # eight fine-tuning runs: about 30 s on a quiet machine
def test_rates_are_chosen_on_held_out_training_data_then_each_seed_runs(recipe, pretrained, tmp_path, monkeypatch):
    """The whole recipe, each of its "processes" run in this one (checked for its flags, not its memory)."""
    calls = []

    def in_process(command):
        calls.append(command[2:])
        return type("Completed", (), {"returncode": recipe.main(command[2:])})

    monkeypatch.setattr(recipe.subprocess, "run", in_process)
    assert recipe.main(["--pretrained", str(pretrained), "--max-train-examples", "48", "--steps", "1",
                        "--batch-size", "8", "--out-dir", str(tmp_path), "--jit-compile", "off", "--seed", "4",
                        "--methods", "head,lora-2", "--seeds", "2", "--select-rate-factors", "10,0.1",
                        "--adapter-learning-rate", "1e-3", "--method-learning-rate", "lora-2=2e-3",
                        "--selection-fraction", "0.25"]) == 0
    assert len(calls) == 2 * 2 + 2 * 2
    selection = list(csv.DictReader(open(tmp_path / "selection.csv")))
    np.testing.assert_allclose(sorted((float(r["learning_rate"]), float(r["factor"]), int(r["seed"]))
                                      for r in selection if r["method"] == "head"), [(1e-4, 0.1, 4), (1e-2, 10, 4)])
    np.testing.assert_allclose(sorted((float(r["learning_rate"]), float(r["factor"]), int(r["seed"]))
                                      for r in selection if r["method"] == "lora-2"), [(2e-4, 0.1, 4), (2e-2, 10, 4)])
    assert all(abs(int(r["scored_examples"]) - 48 * 0.25) <= 1 for r in selection)  # stratified: rounded per class
    best = {}
    for r in sorted(selection, key=lambda r: float(r["learning_rate"])):  # ties: the smaller rate
        if r["method"] not in best or float(r["accuracy"]) > best[r["method"]][1]:
            best[r["method"]] = (float(r["learning_rate"]), float(r["accuracy"]))
    runs = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["method"], int(r["seed"])) for r in runs] == [("head", 4), ("head", 5), ("lora-2", 4), ("lora-2", 5)]
    assert all(float(r["learning_rate"]) == best[r["method"]][0] for r in runs)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["head.seed4.npz", "head.seed5.npz",
                                                             "lora-2.seed4.npz", "lora-2.seed5.npz"]
    markdown = (tmp_path / "results.md").read_text()
    assert "held-out part of the training data" in markdown and "Dev accuracy minus head's" in markdown
