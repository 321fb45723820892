"""Cross-attention, the decoder block, encoder–decoder models, greedy/beam decoding and the translator export."""

import importlib.util
import itertools
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import data, export, models, seq2seq_decoding, text, training
from kerazoo.layers import MultiHeadCrossAttention, TransformerDecoderBlock
from tf_only import assert_no_xla, run_tf_only

HEADS, D_MODEL, D_CONTEXT = 4, 16, 12
RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"


def _cross_pair():
    """A kerazoo cross-attention layer and a Keras MultiHeadAttention holding the same weights."""
    ours = MultiHeadCrossAttention(HEADS)
    ours.build((None, 5, D_MODEL), (None, 7, D_CONTEXT))
    ref = keras.layers.MultiHeadAttention(HEADS, key_dim=D_MODEL // HEADS)
    ref.build((None, 5, D_MODEL), (None, 7, D_CONTEXT))
    inner = D_MODEL
    q, k, v, o = ref.query_dense, ref.key_dense, ref.value_dense, ref.output_dense
    ours.query_dense.set_weights([q.kernel.numpy().reshape(D_MODEL, inner), q.bias.numpy().reshape(inner)])
    ours.key_value_dense.set_weights([
        np.concatenate([d.kernel.numpy().reshape(D_CONTEXT, inner) for d in (k, v)], axis=1),
        np.concatenate([d.bias.numpy().reshape(inner) for d in (k, v)]),
    ])
    ours.output_dense.set_weights([o.kernel.numpy().reshape(inner, D_MODEL), o.bias.numpy()])
    return ours, ref


def test_cross_attention_matches_keras_multi_head_attention(rng):
    ours, ref = _cross_pair()
    query = rng.normal(size=(3, 5, D_MODEL)).astype("float32")
    context = rng.normal(size=(3, 7, D_CONTEXT)).astype("float32")
    context_mask = np.arange(7)[None, :] < np.array([7, 3, 1])[:, None]
    expected, expected_scores = ref(query, context, attention_mask=np.repeat(context_mask[:, None], 5, axis=1),
                                    return_attention_scores=True)
    got, scores = ours(query, context, context_mask=context_mask, return_attention_scores=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    # Keys/values projected once give the same result.
    np.testing.assert_allclose(ours(query, context_mask=context_mask, key_value=ours.key_value(context)),
                               expected, atol=1e-5)


def test_cross_attention_errors():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadCrossAttention(0)
    layer = MultiHeadCrossAttention(2)
    with pytest.raises(ValueError, match="context"):
        layer(np.zeros((1, 3, 8), "float32"))


def test_decoder_block_is_causal_and_attends_to_real_context_only(rng):
    block = TransformerDecoderBlock(2, 32)
    x = rng.normal(size=(2, 6, 16)).astype("float32")
    context = rng.normal(size=(2, 5, 16)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    base = block(x, context, context_mask=mask).numpy()
    for t in range(5):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape)
        out = block(changed, context, context_mask=mask).numpy()
        np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5)
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])
    padded_changed = context.copy()
    padded_changed[0, 3:] = 100.0
    np.testing.assert_allclose(block(x, padded_changed, context_mask=mask)[0], base[0], atol=1e-5)


def _tiny(kind, **kwargs):
    if kind == "transformer":
        return models.transformer_seq2seq(20, 23, max_length=12, d_model=16, num_heads=2, num_layers=2,
                                          ff_dim=32, dropout=0.0, **kwargs)
    return models.rnn_seq2seq(20, 23, embedding_dim=8, units=16, cell=kind)


@pytest.mark.parametrize("kind", ["transformer", "gru", "lstm"])
def test_cached_decoding_equals_full_recomputation(rng, kind):
    model = _tiny(kind)
    source = rng.integers(1, 20, size=(3, 7)).astype("int32")
    source[1, 4:] = 0
    target = rng.integers(1, 23, size=(3, 6)).astype("int32")
    full = model([source, target]).numpy()
    parts = seq2seq_decoding.Seq2SeqDecoder(model)
    state = parts.encode(tf.constant(source), 12)
    for t in range(target.shape[1]):
        logits, state = parts.step(tf.constant(target[:, t]), tf.constant(t), state)
        np.testing.assert_allclose(logits, full[:, t], atol=2e-5)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_beam_width_one_equals_greedy(rng, kind):
    model = _tiny(kind)
    source = [rng.integers(1, 20, size=n) for n in (3, 7, 1, 5)]
    greedy = seq2seq_decoding.translate(model, source, 9, start_token=1, stop_token=2)
    beam = seq2seq_decoding.translate(model, source, 9, start_token=1, stop_token=2, strategy="beam",
                                      beam_width=1)
    np.testing.assert_array_equal(beam, greedy)
    assert greedy.shape == (4, 9)


# A hand-made bigram "decoder": next-token probabilities depend on the previous token only.
# Tokens: 0 pad, 1 start, 2 stop, 3 "a", 4 "b". Greedy takes "a" (0.55) and then wanders;
# the best sequence is "b stop" (0.45 * 0.95).
BIGRAM = np.full((5, 5), 1e-6)
BIGRAM[1, [3, 4]] = [0.55, 0.45]
BIGRAM[3, [2, 3, 4]] = [0.33, 0.34, 0.33]
BIGRAM[4, [2, 3]] = [0.95, 0.05]
BIGRAM[2, 2] = 1.0
BIGRAM /= BIGRAM.sum(axis=1, keepdims=True)


def _bigram_step(tokens, position, state):
    logits = tf.gather(tf.constant(np.log(BIGRAM), tf.float32), tokens)
    return logits, dict(count=state["count"] + 1)


def _best_by_enumeration(max_new, alpha):
    best, best_score = None, -np.inf
    for length in range(1, max_new + 1):
        for seq in itertools.product(range(2, 5), repeat=length):
            if 2 in seq[:-1]:
                continue
            score = sum(np.log(BIGRAM[p, n]) for p, n in zip((1,) + seq[:-1], seq))
            score /= ((5 + length) / 6) ** alpha
            if (seq[-1] == 2 or length == max_new) and score > best_score:
                best, best_score = seq, score
    return list(best)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_returns_the_highest_scoring_hypothesis(alpha):
    args = dict(step=_bigram_step, state=dict(count=tf.zeros([2])), batch_size=2, buffer_length=4,
                max_new_tokens=tf.constant(4), start_token=tf.constant(1), stop_token=tf.constant(2),
                pad_id=tf.constant(0))
    beam = seq2seq_decoding.beam_search(**args, beam_width=3, length_penalty=tf.constant(alpha)).numpy()
    greedy = seq2seq_decoding.greedy_search(**args).numpy()
    best = _best_by_enumeration(4, alpha)
    assert beam[0].tolist() == best + [0] * (4 - len(best)) and beam[1].tolist() == beam[0].tolist()
    assert greedy[0].tolist() != beam[0].tolist()  # the hand-made model defeats greedy decoding


def test_decoding_errors():
    model = _tiny("transformer")
    with pytest.raises(ValueError, match="strategy"):
        seq2seq_decoding.translate(model, [[3]], 4, 1, 2, strategy="sample")
    with pytest.raises(ValueError, match="beam_width"):
        seq2seq_decoding.translate(model, [[3]], 4, 1, 2, strategy="beam", beam_width=0)
    with pytest.raises(ValueError, match="max_length"):
        seq2seq_decoding.translate(model, [list(range(1, 15))], 4, 1, 2)
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        seq2seq_decoding.translate(model, [[25]], 4, 1, 2)
    with pytest.raises(ValueError, match="transformer_seq2seq"):
        seq2seq_decoding.translate(models.transformer_lm(10, 8, 8, 2, 1, 16), [[3]], 4, 1, 2)


def test_models_reload_from_keras_files(tmp_path, rng):
    source = rng.integers(0, 20, size=(2, 6)).astype("int32")
    target = rng.integers(1, 23, size=(2, 5)).astype("int32")
    for kind in ("transformer", "lstm"):
        model = _tiny(kind)
        model.save(tmp_path / f"{kind}.keras")
        loaded = keras.models.load_model(tmp_path / f"{kind}.keras")
        np.testing.assert_allclose(loaded([source, target]), model([source, target]), atol=1e-6)
    block = TransformerDecoderBlock(2, 8, dropout=0.1, norm_first=False)
    assert TransformerDecoderBlock.from_config(block.get_config()).get_config() == block.get_config()


# A toy translation task: the target is the source sentence reversed, in other "words".
WORDS = "red green blue black white pink gray gold".split()
TRANSLATED = "rojo verde azul negro blanco rosa gris oro".split()


def _reverse_pairs(n, seed):
    rng = np.random.default_rng(seed)
    sources, targets = [], []
    for _ in range(n):
        ids = rng.integers(0, len(WORDS), size=rng.integers(2, 6))
        sources.append(" ".join(WORDS[i] for i in ids))
        targets.append(" ".join(TRANSLATED[i] for i in ids[::-1]))
    return sources, targets


@pytest.fixture(scope="module")
def reverse_translator():
    keras.utils.set_random_seed(0)
    sources, targets = _reverse_pairs(1500, seed=0)
    source_tokenizer = text.WordPieceTokenizer.learn(sources, vocab_size=60)
    target_tokenizer = text.WordPieceTokenizer.learn(targets, vocab_size=60, reserved_tokens=(text.START, text.END))
    start, end = target_tokenizer.vocabulary.index(text.START), target_tokenizer.vocabulary.index(text.END)
    encoded = data.encode_pairs(sources, targets, source_tokenizer, target_tokenizer, 8, start, end)
    model = models.transformer_seq2seq(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                                       max_length=8, d_model=32, num_heads=2, num_layers=1, ff_dim=64, dropout=0.0)
    plan = training.select_plan("float32", jit_compile=True)
    training.compile_model(model, plan, optimizer=training.adamw(3e-3, weight_decay=0.0),
                           weighted_metrics=["sparse_categorical_accuracy"])
    model.fit(data.pairs_dataset(encoded, 32, length_buckets=2), epochs=6, verbose=0)  # two shapes
    return model, source_tokenizer, target_tokenizer, start, end


def test_tiny_translator_learns_to_reverse(reverse_translator):
    model, source_tokenizer, target_tokenizer, start, end = reverse_translator
    sources, targets = _reverse_pairs(40, seed=1)
    ids = source_tokenizer(tf.constant(sources)).to_tensor().numpy()
    for strategy in ("greedy", "beam"):
        out = seq2seq_decoding.translate(model, ids, 8, start, end, strategy=strategy)
        out = np.where(out == end, 0, out)
        decoded = [s.decode() for s in target_tokenizer.detokenize(out).numpy()]
        exact = np.mean([d == t for d, t in zip(decoded, targets)])
        assert exact >= 0.9, (strategy, exact, decoded[:3], targets[:3])


def test_translator_export_agrees_in_a_strict_tf_only_process(tmp_path, reverse_translator):
    model, source_tokenizer, target_tokenizer, start, end = reverse_translator
    strings = ["red green blue", "", "gold " * 500, "très bien 😀 日本語 [START] [END]", "pink"]
    path = export.export_translator(model, source_tokenizer, target_tokenizer, tmp_path, "translator",
                                    max_new_tokens=8, strategy="beam", beam_width=3)
    assert_no_xla(path)
    ids = source_tokenizer(tf.constant(strings))[:, :8].to_tensor(shape=[None, 8]).numpy()
    expected = seq2seq_decoding.translate(model, ids, 8, start, end, strategy="beam", beam_width=3)
    expected_text = target_tokenizer.detokenize(np.where(expected == end, 0, expected)).numpy()
    result = run_tf_only(f"""
        import json
        path = newest_version({str(tmp_path / "translator")!r})
        serving = tf.saved_model.load(path).signatures["serving_default"]
        out = serving(text=tf.constant({strings!r}))
        print(json.dumps(dict(translation=[t.decode() for t in out["translation"].numpy()],
                              token_ids=out["token_ids"].numpy().tolist())))
        try:
            session_run(path, "serving_default", {{"text": np.array(b"red", dtype=object)}})
            print("rank-0 request: no error")
        except tf.errors.InvalidArgumentError:
            print("rank-0 request: InvalidArgumentError")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[0])
    assert served["translation"] == [t.decode() for t in expected_text]
    assert served["translation"][0] == "azul verde rojo"
    np.testing.assert_array_equal(np.where(np.array(served["token_ids"]) == end, 0, served["token_ids"]),
                                  np.where(expected == end, 0, expected))
    assert "rank-0 request: InvalidArgumentError" in result.stdout
    assert path.endswith("/1")


def test_rnn_translator_export_needs_no_xla(tmp_path):
    tokenizer = text.WordPieceTokenizer.learn(["red green blue"], vocab_size=30, reserved_tokens=(text.START, text.END))
    model = models.rnn_seq2seq(tokenizer.vocabulary_size, tokenizer.vocabulary_size, embedding_dim=4, units=8,
                               cell="lstm")
    path = export.export_translator(model, tokenizer, tokenizer, tmp_path, "rnn", max_new_tokens=5)
    assert_no_xla(path)
    out = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(["red", ""]))
    assert out["token_ids"].shape == (2, 5) and out["translation"].shape == (2,)


def _random_encoded(n, max_length, seed):
    """encode_pairs-shaped arrays: sources and targets of random, unrelated lengths, 0-padded."""
    rng = np.random.default_rng(seed)
    encoded = {name: np.zeros((n, max_length), np.int32) for name in ("source_ids", "target_ids", "labels")}
    for i in range(n):
        source_length, target_length = rng.integers(1, max_length + 1, size=2)
        encoded["source_ids"][i, :source_length] = rng.integers(3, 50, size=source_length)
        target = rng.integers(3, 50, size=target_length)
        encoded["target_ids"][i, :target_length] = np.concatenate([[1], target[:-1]])
        encoded["labels"][i, :target_length] = target
    return encoded


def test_pairs_dataset_length_buckets_cut_batches_and_keep_every_pair():
    encoded = _random_encoded(300, 12, seed=0)
    lengths = np.maximum((encoded["source_ids"] != 0).sum(1), (encoded["labels"] != 0).sum(1))
    seen = []
    for (source, target), labels, weights in data.pairs_dataset(encoded, 16, shuffle=False, length_buckets=3):
        width = source.shape[1]
        assert width in (4, 8, 12) and target.shape[1] == labels.shape[1] == weights.shape[1] == width
        np.testing.assert_array_equal(weights, (labels.numpy() != 0).astype(np.float32))
        for row in zip(source.numpy(), target.numpy(), labels.numpy()):
            length = max((row[0] != 0).sum(), (row[2] != 0).sum())
            assert width - 4 < length <= width  # the row is in this batch's bucket
            seen.append(tuple(np.concatenate([np.pad(part, (0, 12 - width)) for part in row])))
    expected = [tuple(np.concatenate(row)) for row in zip(encoded["source_ids"], encoded["target_ids"],
                                                          encoded["labels"])]
    assert sorted(seen) == sorted(expected)  # every pair once, unchanged by the cut
    counts = np.bincount(np.searchsorted([4, 8, 12], lengths))
    shuffled = list(data.pairs_dataset(encoded, 16, seed=1, length_buckets=3))
    assert all(labels.shape[0] == 16 for _, labels, _ in shuffled)  # partial batches dropped when shuffling
    assert len(shuffled) == sum(counts // 16)
    with pytest.raises(ValueError, match="length_buckets"):
        data.pairs_dataset(encoded, 16, length_buckets=0)


def test_read_pairs_errors(tmp_path):
    good = tmp_path / "pairs.txt"
    good.write_text("Go.\tVe.\tCC-BY\n\nHi.\tHola.\n", encoding="utf-8")
    assert data.read_pairs(good) == (["Go.", "Hi."], ["Ve.", "Hola."])
    assert data.read_pairs(good, source_column=1, target_column=0) == (["Ve.", "Hola."], ["Go.", "Hi."])
    bad = tmp_path / "bad.txt"
    bad.write_text("Go.\tVe.\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 1 tab-separated"):
        data.read_pairs(bad)
    bad.write_bytes(b"Go.\tVe.\n\xff\tx\n")
    with pytest.raises(ValueError, match="line 2: bytes that are not valid"):
        data.read_pairs(bad)
    with pytest.raises(FileNotFoundError):
        data.read_pairs(tmp_path / "missing.txt")


def _translate_recipe():
    spec = importlib.util.spec_from_file_location("translate", RECIPES / "translate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_translate_recipe_end_to_end(tmp_path, capsys):
    sources, targets = _reverse_pairs(200, seed=2)
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{t}\t{s}\tattribution\n" for s, t in zip(sources, targets)), encoding="utf-8")
    recipe = _translate_recipe()
    assert recipe.main(["--data", str(path), "--source-column", "1", "--target-column", "0",
                        "--vocab-size", "60", "--max-length", "8", "--d-model", "16", "--num-heads", "2",
                        "--num-layers", "1", "--ff-dim", "16", "--epochs", "1", "--batch-size", "32",
                        "--beam-width", "2", "--samples", "1", "--export-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "train 180 / validation 10 / test 10" in out
    assert "BLEU (validation, 10 sentences, greedy)" in out and "BLEU (validation, 10 sentences, beam 2)" in out
    assert "exported translator:" in out
    assert sorted(os.listdir(tmp_path / "out")) == ["translator", "translator.keras",
                                                    "translator.source.vocabulary.json",
                                                    "translator.target.vocabulary.json"]


@pytest.mark.parametrize("flags,message", [
    (["--beam-width", "0"], "--beam-width must be an integer >= 1"),
    (["--d-model", "10", "--num-heads", "4"], "--d-model 10 is not divisible"),
    (["--validation-fraction", "0.7"], "--validation-fraction must be a finite number"),
    (["--data", "/nonexistent/pairs.txt"], "pairs file not found"),
])
def test_translate_recipe_rejects_bad_input_with_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        _translate_recipe().main(flags + ["--no-export"])
    assert message in capsys.readouterr().err + str(exit_info.value.code)


def test_sample_pairs_are_parallel_sentences():
    english, spanish = data.sample_pairs(200, seed=3)
    assert len(english) == len(spanish) == 200 and len(set(english)) > 150
    assert all(e.endswith(".") and s.endswith(".") for e, s in zip(english, spanish))
    negated = [(e, s) for e, s in zip(english, spanish) if " not " in e]
    assert negated and all(" no " in s for _, s in negated)
