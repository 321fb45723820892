"""KV-cache decoding against full recomputation, sampling rules, compile reuse and errors."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import generation, layers, models, text, training

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis")


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(7)
    return models.transformer_lm(vocab_size=40, max_length=48, d_model=32, num_heads=4, num_layers=2,
                                 ff_dim=64)


def _naive_greedy(model, prompt, steps):
    """The oracle: rerun the full model on the whole sequence for every new token."""
    sequence = list(prompt)
    for _ in range(steps):
        sequence.append(int(np.argmax(model(np.array([sequence]))[0, -1])))
    return sequence


@pytest.mark.parametrize("jit_compile", [True, False])
def test_greedy_with_cache_equals_naive_recomputation(lm, jit_compile):
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [12, 30, 2, 2]]
    out = generation.generate(lm, prompts, max_new_tokens=9, jit_compile=jit_compile)
    assert out.shape == (3, 7 + 9)
    for row, prompt in zip(out, prompts):
        expected = _naive_greedy(lm, prompt, 9)
        assert row[:len(expected)].tolist() == expected
        assert (row[len(expected):] == 0).all()


def test_left_and_right_padded_prompt_arrays(lm):
    ragged = generation.generate(lm, [[5, 6, 7], [9]], 4)
    left = generation.generate(lm, np.array([[5, 6, 7], [0, 0, 9]]), 4, prompt_padding="left")
    right = generation.generate(lm, np.array([[5, 6, 7], [9, 0, 0]]), 4, prompt_padding="right")
    assert (left == ragged).all() and (right == ragged).all()
    with pytest.raises(ValueError, match="prompt_padding.*'middle'"):
        generation.generate(lm, [[1]], 2, prompt_padding="middle")
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generation.generate(lm, np.array([[0, 0]]), 2, prompt_padding="left")


def test_lm_overfits_a_tiny_corpus_with_xla():
    keras.utils.set_random_seed(0)
    model = models.transformer_lm(vocab_size=12, max_length=16, d_model=32, num_heads=2, num_layers=2,
                                  ff_dim=64)
    training.compile_model(model, training.TrainingPlan("float32", True, "test"),
                           optimizer=training.adamw(3e-3, weight_decay=0.0))
    sequence = np.array([[1, 5, 3, 9, 2, 7, 4, 11, 6, 10, 8, 3, 5, 2, 9, 1, 7]])
    history = model.fit(sequence[:, :-1], sequence[:, 1:], epochs=150, verbose=0)
    assert model.jit_compile is True and history.history["loss"][-1] < 0.05
    # And it then reproduces the sequence from its first token.
    assert generation.generate(model, sequence[:, :1], 15)[0].tolist() == sequence[0, :16].tolist()


def test_cached_logits_equal_full_forward_logits(lm):
    ids = np.array([[4, 9, 1, 33, 7, 7, 20, 5]])
    full = np.asarray(lm(ids))
    embedding = lm.get_layer("embedding")
    blocks = [lm.get_layer(f"block_{i}") for i in range(2)]
    caches = [b.attention.empty_cache(1, 16) for b in blocks]
    for t in range(ids.shape[1]):
        x = embedding(ids[:, t:t + 1], start_index=t)
        for i, block in enumerate(blocks):
            x, caches[i] = block(x, cache=caches[i], cache_index=t)
        logits = embedding(lm.get_layer("final_norm")(x), reverse=True)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-4)


def test_untied_head_decodes_like_naive_recomputation():
    keras.utils.set_random_seed(1)
    model = models.transformer_lm(vocab_size=40, max_length=48, d_model=32, num_heads=4,
                                  num_layers=1, ff_dim=64, tie_embeddings=False)
    out = generation.generate(model, [[1, 2, 3]], max_new_tokens=6)
    assert out[0].tolist() == _naive_greedy(model, [1, 2, 3], 6)


def test_mixed_bfloat16_model_decodes():
    with training.TrainingPlan("mixed_bfloat16", False, "test").policy_scope():
        model = models.transformer_lm(vocab_size=40, max_length=48, d_model=32, num_heads=4,
                                      num_layers=1, ff_dim=64)
    out = generation.generate(model, [[1, 2, 3], [4]], max_new_tokens=6)
    assert out.shape == (2, 9) and out.dtype == np.int32
    assert out[:, 3:].min() >= 0 and out.max() < 40


def test_sampling_is_reproducible_and_top_k_1_is_greedy(lm):
    prompts = [[1, 2, 3], [4, 5]]
    greedy = generation.generate(lm, prompts, 8)
    assert (generation.generate(lm, prompts, 8, strategy="top_k", top_k=1, seed=3) == greedy).all()
    a = generation.generate(lm, prompts, 8, strategy="top_p", top_p=0.9, temperature=1.5, seed=11)
    b = generation.generate(lm, prompts, 8, strategy="top_p", top_p=0.9, temperature=1.5, seed=11)
    c = generation.generate(lm, prompts, 8, strategy="sample", temperature=2.0, seed=12)
    assert (a == b).all() and not (a == c).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probabilities = np.array([[0.05, 0.4, 0.1, 0.3, 0.15]])
    logits = tf.constant(np.log(probabilities), tf.float32)
    kept = lambda p: np.isfinite(generation.top_p_filter(logits, p).numpy()[0])  # noqa: E731
    assert kept(0.4).tolist() == [False, True, False, False, False]
    assert kept(0.5).tolist() == [False, True, False, True, False]    # 0.4 + 0.3 >= 0.5
    assert kept(0.7).tolist() == [False, True, False, True, False]    # exactly 0.7
    assert kept(0.71).tolist() == [False, True, False, True, True]
    assert kept(1.0).all()


def test_top_k_samples_only_among_the_k_most_likely(lm):
    out = generation.generate(lm, [[1]] * 16, 1, strategy="top_k", top_k=2, temperature=5.0, seed=0)
    top2 = set(np.argsort(np.asarray(lm(np.array([[1]])))[0, -1])[-2:])
    assert set(out[:, 1].tolist()) <= top2 and len(set(out[:, 1].tolist())) == 2


def test_stop_token_ends_a_row(lm):
    free = generation.generate(lm, [[1, 2, 3]], 10)[0]
    stop = int(free[5])  # the third generated token
    out = generation.generate(lm, [[1, 2, 3]], 10, stop_token=stop, pad_id=39)[0]
    first = 3 + list(free[3:]).index(stop)
    assert out[:first + 1].tolist() == free[:first + 1].tolist()
    assert (out[first + 1:] == 39).all()


def test_other_prompt_lengths_reuse_the_compiled_loop(lm):
    generation.generate(lm, [[1, 2], [3, 4]], 5)
    function = generation._compiled[lm][("greedy", True)]
    traces = function.experimental_get_tracing_count()
    generation.generate(lm, [[1, 2, 3, 4, 5, 6], [3]], 5)
    generation.generate(lm, [[9], [3, 3, 3]], 20)
    assert function.experimental_get_tracing_count() == traces


def test_buffers_shorter_than_max_length_decode_like_naive_recomputation():
    """max_length 160 > the 64-token bucket: the cache is 64 or 128 long, one trace serves both prompts."""
    keras.utils.set_random_seed(2)
    model = models.transformer_lm(vocab_size=40, max_length=160, d_model=16, num_heads=2, num_layers=1,
                                  ff_dim=32)
    traces = None
    for prompt, steps in (([5, 6, 7], 10), ([4, 5, 6], 12), (list(range(1, 40)) * 2, 6)):
        assert generation.bucket_length(len(prompt) + steps, 160) < 160
        assert generation.generate(model, [prompt], steps)[0].tolist() == _naive_greedy(model, prompt, steps)
        function = generation._compiled[model][("greedy", True)]
        traces = traces or function.experimental_get_tracing_count()  # the second prompt: same bucket
    assert function.experimental_get_tracing_count() == traces + 1  # only the 128 bucket traced again


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt_ids=[list(range(1, 40)) + [1] * 9], max_new_tokens=1), "exceeds the model's max_length=48"),
    (dict(max_new_tokens=0), "max_new_tokens.*>= 1"),
    (dict(prompt_ids=[[1], []]), "prompt 1 is empty"),
    (dict(prompt_ids=[[1, 40]]), r"outside \[0, 40\)"),
    (dict(strategy="beam"), "strategy.*'beam'"),
    (dict(top_k=5), "strategy='greedy' takes no"),
    (dict(strategy="top_k"), "top_k. goes with strategy='top_k'"),
    (dict(strategy="top_p", top_p=1.5), r"top_p. must be in \(0, 1\]"),
    (dict(strategy="sample", temperature=0), "temperature. must be a finite number > 0; received 0"),
    (dict(strategy="sample", temperature=float("nan")), "temperature. must be a finite number > 0; received nan"),
    (dict(strategy="sample", temperature=float("inf")), "temperature. must be a finite number > 0; received inf"),
    (dict(strategy="top_p", top_p=float("nan")), r"top_p. must be in \(0, 1\]; received nan"),
    (dict(strategy="sample", seed=2 ** 32 + 5), r"seed. must be None or an integer in \[0, 2\*\*31\); "
                                                r"received 4294967301"),
    (dict(strategy="sample", seed=-1), r"seed. must be None or an integer in \[0, 2\*\*31\); received -1"),
    (dict(strategy="sample", seed=1.5), r"seed. must be .*received 1.5"),
    (dict(prompt_ids=[[1.7, 2.0]]), "prompt 0 must hold integer token ids; received dtype float64"),
    (dict(prompt_ids=np.array([[1.0, 2.0]])), "prompt 0 must hold integer token ids; received dtype float64"),
    (dict(prompt_ids=[[1, 2], [[3, 4]]]), r"prompt 1 must be a 1-D sequence of token ids; received shape \(1, 2\)"),
    (dict(prompt_ids=[1, 2]), r"prompt 0 must be a 1-D sequence of token ids; received shape \(\)"),
    (dict(prompt_ids="hello"), "prompt_ids. must be a list of token-id sequences"),
    (dict(pad_id=40), r"pad_id. must be a token id in \[0, 40\); received 40"),
    (dict(pad_id=-1), r"pad_id. must be a token id in \[0, 40\); received -1"),
    (dict(stop_token=99), r"stop_token. must be a token id in \[0, 40\); received 99"),
    (dict(stop_token=True), r"stop_token. must be a token id in \[0, 40\); received True"),
    (dict(strategy="top_k", top_k=41), "top_k.=41 exceeds the vocabulary size 40"),
])
def test_bad_arguments_are_clear_errors(lm, kwargs, message):
    arguments = dict(prompt_ids=[[1, 2]], max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message):
        generation.generate(lm, **arguments)


def test_model_that_is_not_a_causal_lm_is_rejected():
    inputs = keras.Input((None,), dtype="int32")
    with pytest.raises(ValueError, match="transformer_lm"):
        generation.generate(keras.Model(inputs, inputs), [[1]], 2)


def test_other_batch_sizes_reuse_the_compiled_loop(lm):
    generation.generate(lm, [[1, 2]] * 3, 4)
    function = generation._compiled[lm][("greedy", True)]
    traces = function.experimental_get_tracing_count()
    four = generation.generate(lm, [[5, 6, 7], [8], [9, 9], [5, 6, 7]], 4)  # batch bucket 4, as for 3
    assert function.experimental_get_tracing_count() == traces
    assert four.shape == (4, 7)
    three = generation.generate(lm, [[5, 6, 7], [8], [9, 9]], 4)  # one padding row: it changes nothing
    assert (three == four[:3]).all() and (four[3] == four[0]).all()
    assert [generation.bucket_batch(n) for n in (1, 2, 3, 5, 8, 9, 17)] == [1, 2, 4, 8, 8, 16, 24]


def test_a_layer_outside_the_decoding_contract_is_named():
    ids = keras.Input((None,), dtype="int32")
    embedding = layers.TokenAndPositionEmbedding(20, 16, 8, name="embedding")
    x = layers.TransformerBlock(2, 16, causal=True, name="block_0")(embedding(ids))
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    head = keras.layers.Dense(20, name="vocab_projection")  # not "lm_head": decoding cannot know it
    with pytest.raises(ValueError, match="layer 'vocab_projection' \\(Dense\\) is not part of"):
        generation.generate(keras.Model(ids, head(x)), [[1]], 2)
    untied_no_head = keras.Model(ids, x)
    with pytest.raises(ValueError, match="no Dense 'lm_head' and its 'embedding' is not reused"):
        generation.generate(untied_no_head, [[1]], 2)


def test_causal_lm_task_saves_as_one_file_and_generates_from_text_in_a_fresh_process(tmp_path):
    tokenizer = text.CharTokenizer.learn(["the cat sat on the mat"])
    task = models.CausalLM(models.transformer_lm(tokenizer.vocabulary_size, max_length=24, d_model=16,
                                                 num_heads=2, num_layers=1, ff_dim=32), tokenizer)
    expected = task.generate(["the c", ""], max_new_tokens=5)
    ids = [tokenizer(tf.constant(["the c"])).to_list()[0]]
    continuation = generation.generate(task.backbone, ids, 5)[0, len(ids[0]):]
    assert expected[0] == tokenizer.detokenize(tf.constant([continuation])).numpy()[0].decode()
    task.save(tmp_path / "lm.keras")
    assert os.listdir(tmp_path) == ["lm.keras"]
    script = ("import json, sys, keras, kerazoo; task = keras.models.load_model(sys.argv[1]); "
              "print(json.dumps(task.generate(['the c', ''], max_new_tokens=5)))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "lm.keras")], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == expected
    with pytest.raises(ValueError, match="tokenizer has 12 tokens but the backbone's vocabulary is 40"):
        models.CausalLM(models.transformer_lm(40, max_length=8, d_model=8, num_heads=2, num_layers=1,
                                              ff_dim=8), tokenizer)
