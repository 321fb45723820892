"""word2vec: skip-gram windows, sub-sampling and negative tables against their formulas; planted neighbours; the recipe."""

import collections
import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from kerazoo import data, models, training

RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"


def _oracle_pairs(ids, sentence_of, widths):
    pairs = []
    for i in range(len(ids)):
        for offset in range(1, widths[i] + 1):
            for j in (i - offset, i + offset):
                if 0 <= j < len(ids) and sentence_of[j] == sentence_of[i]:
                    pairs.append((int(ids[i]), int(ids[j])))
    return sorted(pairs)


def test_skipgram_pairs_are_the_reduced_windows_within_sentences():
    sentences = [["a", "b", "c", "d", "e", "f", "g"], ["h", "i", "j"], ["k"]]
    words = [w for s in sentences for w in s]
    ids, sentence_of = data.encode_words(sentences, words)
    assert ids.tolist() == list(range(11)) and sentence_of.tolist() == [0] * 7 + [1] * 3 + [2]
    for seed in range(5):
        targets, contexts = data.skipgram_pairs(ids, sentence_of, 3, np.random.default_rng(seed))
        widths = np.random.default_rng(seed).integers(1, 4, size=len(ids))  # the same draws
        assert sorted(zip(targets.tolist(), contexts.tolist())) == _oracle_pairs(ids, sentence_of, widths)
    # window 1: exactly the neighbours inside each sentence
    targets, contexts = data.skipgram_pairs(ids, sentence_of, 1, np.random.default_rng(0))
    assert sorted(zip(targets.tolist(), contexts.tolist())) == sorted(
        [(i, i + 1) for i in range(6)] + [(i + 1, i) for i in range(6)] + [(7, 8), (8, 7), (8, 9), (9, 8)])


def test_sub_sampling_and_negative_tables_match_their_formulas():
    counts = np.array([1000, 100, 10, 1])
    f = counts / counts.sum()
    np.testing.assert_allclose(data.keep_probabilities(counts, 1e-3),
                               np.minimum(1, (np.sqrt(f / 1e-3) + 1) * 1e-3 / f))
    assert data.keep_probabilities(counts, 1e-3)[0] < 0.05 and data.keep_probabilities(counts, 1e-3)[-1] == 1
    np.testing.assert_array_equal(data.keep_probabilities(counts, 0), np.ones(4))
    np.testing.assert_allclose(data.negative_distribution(counts), counts ** 0.75 / np.sum(counts ** 0.75))
    # Sub-sampling keeps each word at its probability.
    ids = np.repeat(np.arange(4), [20000, 20000, 20000, 20000]).astype(np.int32)
    keep = np.array([0.1, 0.5, 0.9, 1.0])
    targets, _ = data.skipgram_pairs(ids, np.zeros_like(ids), 1, np.random.default_rng(0), keep)
    kept = np.bincount(np.concatenate([targets]), minlength=4) / 2 / 20000  # each kept word is a target ~twice
    np.testing.assert_allclose(kept, keep, atol=0.02)


def _window_pairs_oracle(windows):
    """(chunk, target position, context position) of every pair a window batch holds, by its documented contract."""
    tokens, sentences, widths, centres = (np.asarray(windows[key]).reshape(-1, np.shape(windows[key])[-1])
                                          for key in ("tokens", "sentences", "widths", "centres"))
    margin = (tokens.shape[1] - centres.shape[1]) // 2
    np.testing.assert_array_equal(centres, tokens[:, margin:margin + centres.shape[1]])
    return [(c, j, l) for c in range(len(tokens)) for l in range(margin, margin + centres.shape[1])
            for j in range(tokens.shape[1])
            if j != l and abs(j - l) <= widths[c, j] and sentences[c, j] == sentences[c, l]]


def test_dataset_windows_hold_exactly_the_epochs_pairs_and_unigram_075_negatives():
    sentences = [["a", "b", "a", "c", "a", "b", "d", "a"], ["b", "c"], ["d"]] * 20
    words, counts = data.build_vocabulary(sentences, min_count=1)
    assert words == ["a", "b", "c", "d"] and counts.tolist() == [80, 60, 40, 40]
    ids, sentence_of = data.encode_words(sentences, words)
    keep = data.keep_probabilities(counts, 0.05)
    assert 0.4 < keep[0] < 0.6 and keep[-1] < 1  # sub-sampling on: windows must use skipgram_pairs' draws
    dataset = data.skipgram_dataset(ids, sentence_of, counts, window=2, sample=0.05, batch_size=24,
                                    updates_per_step=3, shared_negatives=7, chunk_length=10, seed=3)
    negatives, elements = [], []
    for epoch_seed in range(3, 43):
        pairs = []
        elements.append(0)
        for windows in dataset:
            elements[-1] += 1
            assert windows["tokens"].shape.as_list() == [3, 3, 14] and windows["negatives"].shape[1:] == [3, 7]
            if epoch_seed < 6:
                tokens = windows["tokens"].numpy().reshape(-1, 14)
                pairs += [(tokens[c, j], tokens[c, l]) for c, j, l in _window_pairs_oracle(windows)]
            negatives.append(windows["negatives"].numpy().ravel())
        if epoch_seed < 6:
            expected = data.skipgram_pairs(ids, sentence_of, 2, np.random.default_rng(epoch_seed), keep)
            assert len(pairs) > 100 and sorted(pairs) == sorted(zip(*(e.tolist() for e in expected)))
    assert set(elements) == {int(dataset.cardinality())}  # known up front: Keras shows and counts every epoch
    negatives = np.concatenate(negatives)
    np.testing.assert_allclose(np.bincount(negatives, minlength=4) / negatives.size,
                               data.negative_distribution(counts), atol=0.03)


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.SGD(0.025),  # word2vec's rate; the sparse word2vec update
    lambda: keras.optimizers.Adam(0.02),  # Keras's own train step, dense gradients
], ids=["sgd", "adam"])
def test_planted_pairs_become_nearest_neighbours(optimizer):
    # p_i and q_i occur in the same company (between a_i and b_i), never together: word2vec
    # gives words with the same contexts close vectors.
    rng = np.random.default_rng(0)
    planted = [(f"p{i}", f"q{i}") for i in range(6)]
    fillers = [f"f{i}" for i in range(20)]
    sentences = []
    for _ in range(1200):
        i = rng.integers(len(planted))
        sentence = list(rng.choice(fillers, size=4))
        at = rng.integers(0, 5)
        sentences.append(sentence[:at] + [f"a{i}", planted[i][rng.integers(2)], f"b{i}"] + sentence[at:])
    words, counts = data.build_vocabulary(sentences, min_count=1)
    ids, sentence_of = data.encode_words(sentences, words)
    keras.utils.set_random_seed(0)
    model = models.word2vec(len(words), 16)
    training.compile_model(model, training.select_plan("float32", jit_compile=True),
                           optimizer=optimizer(), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(data.skipgram_dataset(ids, sentence_of, counts, window=1, sample=0, batch_size=128,
                                    updates_per_step=4), epochs=3, verbose=0)
    vectors = model.get_layer("target_embedding").embeddings.numpy()
    index = {w: i for i, w in enumerate(words)}
    queries = [index[p] for p, _ in planted]
    nearest, _ = models.nearest_neighbours(vectors, vectors[queries], 1, exclude=[[q] for q in queries])
    assert [words[i] for i in nearest[:, 0]] == [q for _, q in planted]


def test_analogy_accuracy_and_reader(tmp_path):
    words = ["king", "queen", "man", "woman", "paris", "france", "rome", "italy"]
    royal, female, capital = np.eye(3)
    country = {"france": np.array([0, 0, 0.5]), "italy": np.array([0.1, 0.1, 0.5])}
    vectors = np.array([royal + 0.1, royal + female, [0.1, 0, 0], female + [0.1, 0, 0],
                        capital + [0, 0.3, 0], capital + country["france"], capital + [0.3, 0, 0],
                        capital + country["italy"]], dtype=np.float32)
    path = tmp_path / "questions.txt"
    path.write_text("// copyright\n: family\nking queen man woman\nman woman King Queen\n"
                    ": capitals\nParis France Rome Italy\nParis France Berlin Germany\n")
    questions = models.read_analogies(path)
    assert len(questions) == 4 and questions[0] == ("king", "queen", "man", "woman")
    accuracy, correct, asked, total = models.analogy_accuracy(vectors, words, questions)
    assert (asked, total) == (3, 4)
    expected = []
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    index = {w: i for i, w in enumerate(words)}
    for q in questions[:3]:
        a, b, c, d = (index[w.lower()] for w in q)
        scores = unit @ (unit[b] - unit[a] + unit[c])
        scores[[a, b, c]] = -np.inf
        expected.append(int(np.argmax(scores)) == d)
    assert correct == sum(expected) and accuracy == pytest.approx(sum(expected) / 3)
    path.write_text("king queen man\n")
    with pytest.raises(ValueError, match="line 1: expected four words"):
        models.read_analogies(path)


def _recipe():
    spec = importlib.util.spec_from_file_location("word2vec_recipe", RECIPES / "word2vec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_word2vec_recipe_writes_projector_files_and_model(tmp_path, capsys):
    analogies = tmp_path / "questions.txt"
    analogies.write_text(": x\nthe a of and\nzzz the a of\n")
    assert _recipe().main(["--epochs", "2", "--embedding-dim", "8", "--analogies", str(analogies),
                           "--probe", "the", "unknownword", "--export-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "the: " in out and "not in the vocabulary (skipped): unknownword" in out
    assert "of 1 in-vocabulary questions; 2 in the file" in out
    vectors = (tmp_path / "out" / "word2vec.vectors.tsv").read_text().splitlines()
    metadata = (tmp_path / "out" / "word2vec.metadata.tsv").read_text().splitlines()
    assert len(vectors) == len(metadata) > 20 and all(len(line.split("\t")) == 8 for line in vectors)
    assert len(set(metadata)) == len(metadata)
    model = keras.models.load_model(tmp_path / "out" / "word2vec.keras")
    np.testing.assert_allclose(model.get_layer("target_embedding").embeddings.numpy()[0],
                               [float(x) for x in vectors[0].split("\t")], rtol=1e-5)
    assert sorted(os.listdir(tmp_path / "out")) == ["word2vec.keras", "word2vec.metadata.tsv", "word2vec.vectors.tsv"]


def test_word2vec_recipe_trains_under_a_mirrored_strategy(tmp_path):
    # Two replicas: the pairs are listed (window_pairs) for Keras's all-reducing step; a fresh
    # process, since logical devices are set up before TensorFlow starts.
    result = subprocess.run([sys.executable, str(RECIPES / "word2vec.py"), "--strategy", "mirrored", "--epochs", "2",
                             "--embedding-dim", "8", "--export-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 replicas in sync" in result.stdout and "done: 2 epochs" in result.stdout
    contexts = keras.models.load_model(tmp_path / "word2vec.keras").get_layer("context_embedding").embeddings.numpy()
    assert np.isfinite(contexts).all() and np.abs(contexts).max() > 0  # the context table starts at zero


@pytest.mark.parametrize("flags,message", [
    (["--window", "0"], "--window must be an integer >= 1"),
    (["--sample", "2"], "--sample must be a finite number"),
    (["--data", "/nonexistent.txt"], "corpus file not found"),
])
def test_word2vec_recipe_rejects_bad_input_with_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main(flags + ["--no-export"])
    assert message in capsys.readouterr().err + str(exit_info.value.code)


def test_word2vec_model_scores_are_dot_products(rng):
    model = models.word2vec(50, 4)
    targets = rng.integers(0, 50, size=3).astype("int32")
    candidates = rng.integers(0, 50, size=(3, 5)).astype("int32")
    model.get_layer("context_embedding").embeddings.assign(rng.normal(size=(50, 4)).astype("float32"))
    t = model.get_layer("target_embedding").embeddings.numpy()[targets]
    c = model.get_layer("context_embedding").embeddings.numpy()[candidates]
    np.testing.assert_allclose(model([targets, candidates]), np.einsum("bd,bnd->bn", t, c), rtol=1e-5)
    assert collections.Counter(type(layer).__name__ for layer in model.layers)["Embedding"] == 2


@pytest.mark.parametrize("jit_compile", [False, True])
def test_sgd_train_step_is_word2vecs_sparse_update_for_every_pair(rng, jit_compile):
    sentences = [[f"w{i}" for i in rng.integers(0, 9, size=rng.integers(1, 9))] for _ in range(40)]
    words, counts = data.build_vocabulary(sentences, min_count=1)
    ids, sentence_of = data.encode_words(sentences, words)
    windows = next(iter(data.skipgram_dataset(ids, sentence_of, counts, window=3, sample=0, batch_size=16,
                                              updates_per_step=2, shared_negatives=4, chunk_length=8)))
    vocab, dim, rate, negatives_per_pair = len(words), 5, 0.05, 3
    model = models.word2vec(vocab, dim, negatives_per_pair)
    target_table, context_table = (rng.normal(size=(2, vocab, dim)) * 0.5).astype("float32")
    model.get_layer("target_embedding").embeddings.assign(target_table)
    model.get_layer("context_embedding").embeddings.assign(context_table)
    model.compile(optimizer=keras.optimizers.SGD(rate), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    loss = model.train_on_batch(windows, return_dict=True)["loss"]
    # word2vec.c's step for every pair of each update in turn (each from the vectors before it): the
    # true context with label 1, each of the chunk's shared negatives with label 0 and weight 3 / 4.
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    targets, contexts, losses = target_table.copy(), context_table.copy(), []
    for update in range(2):
        part = {key: value[update] for key, value in windows.items()}
        tokens, shared = part["tokens"].numpy(), part["negatives"].numpy()
        before_t, before_c = targets.copy(), contexts.copy()
        for c, j, l in _window_pairs_oracle(part):
            t = tokens[c, j]
            for candidate, label, weight in [(tokens[c, l], 1.0, 1.0)] + [(n, 0.0, 3 / 4) for n in shared[c]]:
                p = sigmoid(before_t[t] @ before_c[candidate])
                targets[t] -= rate * weight * (p - label) * before_c[candidate]
                contexts[candidate] -= rate * weight * (p - label) * before_t[t]
                losses.append((weight, -np.log(p if label else 1 - p)))
    assert len(losses) > 50
    np.testing.assert_allclose(model.get_layer("target_embedding").embeddings.numpy(), targets, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("context_embedding").embeddings.numpy(), contexts, rtol=1e-4, atol=1e-5)
    weights, values = np.array(losses).T
    assert loss == pytest.approx((weights * values).sum() / (len(losses) / 5 * 4), rel=1e-4)  # per score: 1 + 3
    assert int(model.optimizer.iterations.numpy()) == 1


def test_window_pairs_list_the_same_pairs_for_keras_own_step(rng):
    sentences = [[f"w{i}" for i in rng.integers(0, 9, size=rng.integers(1, 9))] for _ in range(40)]
    words, counts = data.build_vocabulary(sentences, min_count=1)
    ids, sentence_of = data.encode_words(sentences, words)
    windows = next(iter(data.skipgram_dataset(ids, sentence_of, counts, window=3, sample=0, batch_size=16,
                                              updates_per_step=2, shared_negatives=4, chunk_length=8)))
    (targets, candidates), labels, weights = models.window_pairs(windows, num_negatives=3)
    listed = weights.numpy() > 0
    tokens = windows["tokens"].numpy().reshape(-1, 14)
    negatives = windows["negatives"].numpy().reshape(-1, 4)
    expected = sorted((tokens[c, j], tokens[c, l], c) for c, j, l in _window_pairs_oracle(windows))
    chunk = np.arange(len(targets)) // (8 * 6)
    assert sorted(zip(targets.numpy()[listed], candidates.numpy()[listed, 0], chunk[listed])) == expected
    assert np.isin(candidates.numpy()[:, 1:], negatives[chunk]).reshape(len(chunk), -1).all(axis=1).all()
    np.testing.assert_array_equal(labels.numpy(), np.tile([1.0, 0, 0, 0], (len(targets), 1)))
    np.testing.assert_array_equal(np.unique(weights.numpy()), [0.0, 1.0])
    # evaluate: the compiled loss on the listed pairs (binary cross-entropy, weight 0 where no pair exists)
    model = models.word2vec(len(words), 4, num_negatives=3)
    model.get_layer("context_embedding").embeddings.assign(rng.normal(size=(len(words), 4)).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    logits = model.predict_on_batch([targets, candidates])
    bce = np.mean(np.logaddexp(0, logits) - labels.numpy() * logits, axis=1)  # per row, over its 4 scores
    expected = np.sum(bce * weights.numpy()) / len(bce)  # Keras's default: the weighted sum / all rows
    assert model.test_on_batch(windows) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="skipgram_dataset"):
        models.word2vec(9, 4).train_step(((np.zeros(3, "int32"), np.zeros((3, 2), "int32")), np.zeros((3, 2))))


def test_skipgram_model_reloads_from_keras_file(tmp_path, rng):
    model = models.word2vec(20, 4, name="vectors")
    model.get_layer("context_embedding").embeddings.assign(rng.normal(size=(20, 4)).astype("float32"))
    model.save(tmp_path / "w.keras")
    loaded = keras.models.load_model(tmp_path / "w.keras")
    assert isinstance(loaded, models.SkipGram) and loaded.name == "vectors"
    batch = [np.array([1, 2], "int32"), np.array([[3, 4], [5, 6]], "int32")]
    np.testing.assert_allclose(loaded(batch), model(batch), rtol=1e-6)
