"""In-context learning: prompts, constrained-choice scoring against a numpy oracle, calibration, task splits."""

import json

import keras
import numpy as np
import pytest

from kerazoo import icl, text
from kerazoo.data import few_shot

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789=:>/[]NA \n"


@pytest.fixture(scope="module")
def tokenizer():
    return text.CharTokenizer(list(text.SPECIAL_TOKENS) + sorted(set(CHARS)))


class RecordingTokenizer:
    """A tokenizer that remembers every text it encodes."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts):
        self.texts.extend(t.decode() for t in texts.numpy())
        return self.tokenizer(texts)


def bigram_model(tokenizer, table):
    """A model whose next-token log-probabilities depend only on the current token: `table[prev] = {next: p}`.

    Each row's probabilities should sum to 1 (the model's softmax normalises them).

    Returns the model and the dense `(vocab, vocab)` log-probability table (the oracle).
    """
    index = {token: i for i, token in enumerate(tokenizer.vocabulary)}
    size = tokenizer.vocabulary_size
    log_probs = np.full((size, size), -30.0, dtype=np.float32)
    for prev, row in table.items():
        for token, p in row.items():
            log_probs[index[prev], index[token]] = np.log(p)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(size, size)])
    model.layers[0].set_weights([log_probs])
    return model, log_probs


def oracle_log_likelihood(tokenizer, log_probs, prompt, continuation):
    normalised = log_probs - np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    ids = [tokenizer.vocabulary.index(c) for c in prompt + continuation]
    return sum(normalised[ids[t - 1], ids[t]] for t in range(len(prompt), len(ids)))


def test_few_shot_prompt_template_separator_instructions():
    prompt = icl.few_shot_prompt([("cat", "animal"), ("rose", "plant")], ("dog", "animal"),
                                 template="Q: {input}\nA: {output}.", separator="\n---\n",
                                 instructions="Name the kingdom.\n")
    assert prompt == "Name the kingdom.\nQ: cat\nA: animal.\n---\nQ: rose\nA: plant.\n---\nQ: dog\nA: "
    pair = icl.few_shot_prompt([({"premise": "p1", "hypothesis": "h1"}, "yes")], {"premise": "p2", "hypothesis": "h2"},
                               template="{premise} / {hypothesis}? {output}", separator=" | ")
    assert pair == "p1 / h1? yes | p2 / h2? "
    assert icl.few_shot_prompt([], "x", template="{input}={output}") == "x="
    with pytest.raises(ValueError, match="exactly one '{output}'"):
        icl.few_shot_prompt([], "x", template="{input}")
    with pytest.raises(ValueError, match="does not fit the example"):
        icl.few_shot_prompt([("a", "b")], "x", template="{premise}{output}")


def test_demonstrations_never_include_the_query_and_draws_follow_the_seed(tokenizer):
    examples = [(f"q{i:02d}", "a" if i % 2 else "b") for i in range(20)]
    task = few_shot.FewShotTask("pool", examples, None, ("a", "b"), "{input}:{output}", "/")
    model, _ = bigram_model(tokenizer, {})

    def prompts(seed):
        recorder = RecordingTokenizer(tokenizer)
        icl.evaluate(model, recorder, task, shots=(4,), trials=3, seed=seed)
        return [t for t in recorder.texts if t.endswith(":")]

    first = prompts(0)
    assert len(first) == 3 * 16  # each trial answers the 16 examples that are not its demonstrations
    for prompt in first:
        query = prompt[-4:-1]
        assert prompt.count(query) == 1, prompt  # the query appears only as the query
        assert prompt.count("/") == 4
    assert prompts(0) == first
    assert prompts(1) != first


def test_choice_picks_the_most_likely_label_and_sums_multi_token_labels(tokenizer):
    # After "p" the first token of "xy" is likelier than "z" (0.5 > 0.3), but "y" after "x" (0.4)
    # makes the total 0.2 < 0.3: the sum picks "z" where a first-token or per-token-mean score
    # would pick "xy". After "q", "z" wins on every count.
    table = {"p": {"x": 0.5, "z": 0.3, "a": 0.2}, "q": {"x": 0.2, "z": 0.3, "a": 0.5}, "x": {"y": 0.4, "a": 0.6}}
    model, log_probs = bigram_model(tokenizer, table)
    task = few_shot.FewShotTask("t", [("p", "z"), ("q", "xy"), ("q", "z")], None, ("xy", "z"), "{input}{output}")
    expected = []
    for x, y in task.queries:
        scores = [oracle_log_likelihood(tokenizer, log_probs, x, label) for label in task.labels]
        expected.append(task.labels[int(np.argmax(scores))] == y)
    assert expected == [True, False, True]
    (result,) = icl.evaluate(model, tokenizer, task, shots=(0,))
    assert result.accuracy == pytest.approx(2 / 3) and result.answered == 3
    # With "y" certain after "x", "xy" (0.5) beats "z" (0.3) after "p".
    table["x"] = {"y": 1.0}
    model, _ = bigram_model(tokenizer, table)
    (result,) = icl.evaluate(model, tokenizer, task, shots=(0,))
    assert result.accuracy == pytest.approx(1 / 3)


def test_calibration_divides_by_the_content_free_probabilities(tokenizer):
    # The model prefers "x" after both inputs; with content-free inputs ("N/A", "[MASK]": last
    # tokens "A" and "]"; "" has no tokens at 0 shots) it gives p_cf = (0.575, 0.425).
    table = {"p": {"x": 0.6, "y": 0.4}, "q": {"x": 0.55, "y": 0.45},
             "A": {"x": 0.6, "y": 0.4}, "]": {"x": 0.55, "y": 0.45}}
    model, log_probs = bigram_model(tokenizer, table)
    task = few_shot.FewShotTask("t", [("p", "x"), ("q", "y")], None, ("x", "y"), "{input}{output}")
    p_cf = np.mean([[0.6, 0.4], [0.55, 0.45]], axis=0)
    calibrated = np.array([[0.6, 0.4], [0.55, 0.45]]) / p_cf
    assert calibrated.argmax(axis=1).tolist() == [0, 1]  # W p flips the second query to "y"
    (plain,) = icl.evaluate(model, tokenizer, task, shots=(0,))
    (fixed,) = icl.evaluate(model, tokenizer, task, shots=(0,), calibrate=True)
    assert plain.accuracy == 0.5 and fixed.accuracy == 1.0
    both = icl.evaluate(model, tokenizer, task, shots=(0,), calibrate="both")
    assert both == {"plain": [plain], "calibrated": [fixed]}


def test_generate_exact_match_and_intervals(tokenizer):
    from kerazoo import models

    keras.utils.set_random_seed(0)
    model = models.transformer_lm(tokenizer.vocabulary_size, 32, 16, 2, 1, 32)
    task = few_shot.FewShotTask("t", [("ab", "c"), ("cd", "e"), ("ef", "g")], None, None, "{input}={output}", " ")
    (result,) = icl.evaluate(model, tokenizer, task, shots=(1,), trials=2, method="generate")
    assert result.answered == 4 and 0 <= result.accuracy <= 1
    assert result.interval == icl.wilson_interval(round(result.accuracy * 4), 4)
    low, high = icl.wilson_interval(45, 50)
    assert low < 0.9 < high and high < 0.97  # the Wilson interval stays inside [0, 1] and is asymmetric
    with pytest.raises(ValueError, match="has no labels"):
        icl.evaluate(model, tokenizer, task)
    with pytest.raises(ValueError, match="too few for 3 demonstrations"):
        icl.evaluate(model, tokenizer, task, shots=(3,), method="generate")
    with pytest.raises(ValueError, match="calibrate=True needs method='choice'"):
        icl.evaluate(model, tokenizer, task, method="generate", calibrate=True)


def test_long_prompts_are_cut_on_the_left(tokenizer):
    from kerazoo import models

    model = models.transformer_lm(tokenizer.vocabulary_size, 12, 16, 2, 1, 32)
    examples = [(c, d) for c, d in zip("abcdefgh", "01010101")]
    task = few_shot.FewShotTask("t", examples[:2], examples, ("0", "1"), "{input}={output}", " ")
    results = icl.evaluate(model, tokenizer, task, shots=(0, 4), trials=1)
    assert [r.truncated for r in results] == [0, 2]  # 4 shots: 4 * 4 + 2 + 1 tokens > 12


def test_mapping_split_holds_out_rules_from_every_training_episode():
    # Two symbols each side: only two one-to-one mappings exist, so training can use only the other.
    family = few_shot.TokenMappingFamily(num_inputs=2, input_symbols="ab", output_symbols="01")
    held_out = few_shot.split_rules(family, 1, seed=3)
    texts, masks, rules = few_shot.episodes(family, 50, 6, exclude=held_out, seed=0)
    (only,) = held_out
    for episode, mask, rule in zip(texts, masks, rules):
        pairs = set(pairs_in(episode))
        assert rule != only and pairs <= set(rule) and not pairs & set(only)
        assert "".join(c for c, m in zip(episode, mask) if m) == "".join(y for _, y in pairs_in(episode))
    with pytest.raises(ValueError, match="excluded"):
        few_shot.episodes(family, 5, 6, exclude={(("a", "0"), ("b", "1")), (("a", "1"), ("b", "0"))})


def pairs_in(episode):
    return [(pair[0], pair[1:]) for pair in episode.split(" ")]


def test_held_out_tasks_and_linear_family():
    family = few_shot.TokenMappingFamily()
    rules = few_shot.split_rules(family, 10, seed=0)
    texts, _, used = few_shot.episodes(family, 200, 8, exclude=rules, seed=1)
    assert not set(used) & rules
    tasks = few_shot.held_out_tasks(family, rules, num_demonstrations=16, num_queries=4)
    assert len(tasks) == 10
    for task, rule in zip(tasks, sorted(rules)):  # in the rules' sorted order
        assert task.labels == family.labels(rule)
        assert set(task.queries) | set(task.demonstrations) <= set(rule)
        assert len(task.demonstrations) == 16 and len(task.queries) == 4
    linear = few_shot.LinearRuleFamily(slopes=(2,), intercepts=(3,))
    assert linear.labels((2, 3))[:3] == ("03", "05", "07")
    with pytest.raises(ValueError, match="two digits"):
        few_shot.LinearRuleFamily(slopes=(12,))


def test_load_few_shot_task(tmp_path):
    path = tmp_path / "sentiment.jsonl"
    path.write_text(json.dumps({"labels": ["good", "bad"]}) + "\n"
                    + "".join(json.dumps({"input": t, "output": y}) + "\n" for t, y in
                              [("fine film", "good"), ("dull", "bad"), ("great", "good")]))
    task = few_shot.load_few_shot_task(path)
    assert task.labels == ("good", "bad") and task.queries[1] == ("dull", "bad") and task.demonstrations is None
    assert task.template == "{input}\n{output}" and task.name == "sentiment"
    pairs = tmp_path / "nli.jsonl"
    pairs.write_text(json.dumps({"input": {"premise": "p", "hypothesis": "h"}, "output": "yes"}) + "\n"
                     + json.dumps({"input": {"premise": "q", "hypothesis": "g"}, "output": "no"}) + "\n")
    assert few_shot.load_few_shot_task(pairs).template == "hypothesis: {hypothesis}\npremise: {premise}\n{output}"
    bad = tmp_path / "bad.jsonl"
    for content, message in [('{"input": "a"}\n', "line 1: expected an object with 'input' and 'output'"),
                             ('{"input": "a", "output": "b"}\nnot json\n', "line 2: not valid JSON"),
                             ('{"input": 3, "output": "b"}\n', "line 1: 'input' must be a string"),
                             ('{"labels": ["x", "y"]}\n{"input": "a", "output": "b"}\n{"input": "c", "output": "x"}\n',
                              r"outputs \['b'\] are not in the labels"),
                             ('{"input": "a", "output": "b"}\n', "has 1 examples")]:
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            few_shot.load_few_shot_task(bad)
    with pytest.raises(FileNotFoundError, match="task file not found"):
        few_shot.load_few_shot_task(tmp_path / "missing.jsonl")


def test_format_results_counts_prompts_shared_by_plain_and_calibrated_once():
    row = icl.ShotAccuracy(shots=1, accuracy=0.5, interval=(0.2, 0.8), trial_accuracies=(0.5,), answered=10,
                           truncated=3)
    table = icl.format_results({"plain": [row], "calibrated": [row]}, chance=0.5)
    assert table.splitlines()[-1] == "3 prompts were cut on the left to fit the context"
