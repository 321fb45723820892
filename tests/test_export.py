"""SavedModel exports: TF Serving layout, atomic versions, and serving in a strict TF-only process."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from kerazoo import export, generation, models, text
from tf_only import assert_no_xla, run_tf_only, xla_ops

TEXTS = ["a good film", "a bad film", "not good", "good good good", "bad"] * 4


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(3)
    vectorizer = text.word_vectorizer(vocab_size=30, max_length=8)
    vectorizer.adapt(TEXTS)
    model = models.lstm_classifier(vocab_size=30, embedding_dim=4, lstm_units=4, max_length=8)
    model.compile("adam", "binary_crossentropy")
    labels = np.array([1, 0, 0, 1, 0] * 4)
    model.fit(vectorizer(tf.constant(TEXTS)), labels, epochs=2, verbose=0)
    return model, vectorizer


def _strings():
    return ["a good film", "", " ".join(["good"] * 10_000), "très bien 😀 日本語", "bad"]


def test_classifier_export_serves_in_a_strict_tf_only_process(tmp_path, classifier):
    model, vectorizer = classifier
    first = export.export_saved_model(model, tmp_path, "sentiment", preprocessor=vectorizer)
    second = export.export_saved_model(model, tmp_path, "sentiment", preprocessor=vectorizer)
    assert (first, second) == (str(tmp_path / "sentiment" / "1"), str(tmp_path / "sentiment" / "2"))
    for version in (first, second):
        assert os.path.isfile(os.path.join(version, "saved_model.pb"))
        assert os.path.isfile(os.path.join(version, "variables", "variables.index"))
    assert sorted(os.listdir(tmp_path / "sentiment")) == ["1", "2"]  # no temporary folders left
    expected = np.asarray(model(vectorizer(tf.constant(_strings()))))[:, 0]
    result = run_tf_only(f"""
        import json
        path = newest_version({str(tmp_path / "sentiment")!r})
        serving = tf.saved_model.load(path).signatures["serving_default"]
        (spec,), inputs = serving.structured_input_signature[1].items(), None
        out = serving(text=tf.constant({_strings()!r}))
        print(json.dumps(dict(
            version=os.path.basename(path), input=[spec[0], spec[1].dtype.name, spec[1].shape.as_list()],
            outputs=sorted(serving.structured_outputs),
            probabilities=out["probabilities"].numpy().tolist(), label=out["label"].numpy().tolist())))
        try:
            session_run(path, "serving_default", {{"text": np.array(b"a good film", dtype=object)}})
            print("rank-0 request: no error")
        except tf.errors.InvalidArgumentError as error:
            print("rank-0 request: InvalidArgumentError")
        by_name = session_run(path, "serving_default", {{"text": np.array([b"a good film"], dtype=object)}})
        print("session:", float(by_name["probabilities"][0]))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[0])
    assert report["version"] == "2"
    assert report["input"] == ["text", "string", [None]]
    assert report["outputs"] == ["label", "probabilities"]
    probabilities = np.array(report["probabilities"])
    assert probabilities.shape == (5,) and ((0 <= probabilities) & (probabilities <= 1)).all()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert report["label"] == (expected >= 0.5).astype(int).tolist()
    assert "rank-0 request: InvalidArgumentError" in result.stdout
    assert f"session: {float(np.float32(expected[0]))}" in result.stdout


def test_multiclass_export_returns_class_probabilities(tmp_path):
    vectorizer = text.word_vectorizer(vocab_size=20, max_length=4)
    vectorizer.adapt(TEXTS)
    model = models.lstm_classifier(vocab_size=20, max_length=4, num_classes=3)
    path = export.export_saved_model(model, tmp_path, "topics", preprocessor=vectorizer)
    out = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(["good", "bad film"]))
    expected = np.asarray(model(vectorizer(tf.constant(["good", "bad film"]))))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-6)
    assert out["label"].numpy().tolist() == expected.argmax(-1).tolist()


def test_no_export_needs_xla(tmp_path, classifier):
    model, vectorizer = classifier
    tokenizer = text.CharTokenizer.learn(["abc"])
    lm = models.transformer_lm(tokenizer.vocabulary_size, max_length=8, d_model=8, num_heads=2, num_layers=1,
                               ff_dim=16)
    generation.generate(lm, [[2]], 3)  # the XLA-compiled decoder exists; the export must not use it
    assert_no_xla(export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer))
    assert_no_xla(export.export_text_generator(lm, tokenizer, tmp_path, "lm", max_new_tokens=4))


def test_the_xla_check_finds_tf2xla_ops_and_xla_marked_functions(tmp_path, classifier):
    model, vectorizer = classifier

    def slice_update(strings):  # keras.ops.slice_update is XlaDynamicUpdateSlice on TensorFlow
        ids = tf.cast(vectorizer(strings), tf.int32)
        return {"ids": keras.ops.slice_update(ids, (0, 0), ids[:, :1] + 1)}

    path = export.export_saved_model(model, tmp_path, "dus", preprocessor=vectorizer, serve_fn=slice_update)
    assert xla_ops(path) == ["XlaDynamicUpdateSlice"]
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, jit_compile=True,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "jit"), signatures={"serving_default": module.f})
    assert any(name.startswith("_XlaMustCompile:") for name in xla_ops(str(tmp_path / "jit")))
    with pytest.raises(AssertionError, match="needs XLA to serve"):
        assert_no_xla(path)


def test_concurrent_exports_of_one_name_take_distinct_versions(tmp_path, classifier, monkeypatch):
    model, vectorizer = classifier
    archive_class = type(keras.export.ExportArchive())
    write_out = archive_class.write_out
    others = []

    def another_export_finishes_first(self, filepath, **kwargs):
        write_out(self, filepath, **kwargs)
        if not others:  # while this export is written, a second one takes the next version
            others.append(None)
            others[0] = export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer)

    monkeypatch.setattr(archive_class, "write_out", another_export_finishes_first)
    first = export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer)
    assert (others[0], first) == (str(tmp_path / "m" / "1"), str(tmp_path / "m" / "2"))
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2"]
    others.clear()
    with pytest.raises(FileExistsError, match="could not move the export"):
        export.export_saved_model(model, tmp_path, "m", version=3, preprocessor=vectorizer)
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "2", "3"]  # the explicit version lost the race


def test_versions_and_interrupted_exports(tmp_path, classifier, monkeypatch):
    model, vectorizer = classifier
    assert export.export_saved_model(model, tmp_path, "m", version=5, preprocessor=vectorizer).endswith("5")
    os.makedirs(tmp_path / "m" / "notes")  # non-integer folders are ignored
    assert export.latest_version(tmp_path / "m") == (5, str(tmp_path / "m" / "5"))
    with pytest.raises(FileExistsError, match="version 5 already exists"):
        export.export_saved_model(model, tmp_path, "m", version=5, preprocessor=vectorizer)

    def fail_midway(self, filepath, **kwargs):
        os.makedirs(filepath)
        open(os.path.join(filepath, "saved_model.pb"), "w").write("partial")
        raise RuntimeError("disk full")

    archive_class = type(keras.export.ExportArchive())  # the backend's subclass
    monkeypatch.setattr(archive_class, "write_out", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer)
    assert sorted(os.listdir(tmp_path / "m")) == ["5", "notes"]


def test_export_argument_errors(tmp_path, classifier):
    model, vectorizer = classifier
    with pytest.raises(ValueError, match="pass the `preprocessor`"):
        export.export_saved_model(model, tmp_path, "m")
    with pytest.raises(ValueError, match="simple folder name.*'../evil'"):
        export.export_saved_model(model, tmp_path, "../evil", preprocessor=vectorizer)
    with pytest.raises(ValueError, match="positive integer.*0"):
        export.export_saved_model(model, tmp_path, "m", version=0, preprocessor=vectorizer)
    with pytest.raises(ValueError, match="positive integer.*True"):
        export.export_saved_model(model, tmp_path, "m", version=True, preprocessor=vectorizer)
    with pytest.raises(ValueError, match=r"simple folder name.*'m\\n'"):
        export.export_saved_model(model, tmp_path, "m\n", preprocessor=vectorizer)
    assert not os.listdir(tmp_path)
    with pytest.raises(TypeError, match="keras.Model"):
        export.export_saved_model(vectorizer, tmp_path, "m")
    with pytest.raises(FileNotFoundError, match="no exported versions"):
        export.latest_version(tmp_path / "nothing")
    ragged = lambda strings: {"tokens": tf.strings.split(strings)}  # noqa: E731
    with pytest.raises(ValueError, match="'tokens' is a RaggedTensor"):
        export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer, serve_fn=ragged)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_model_with_non_finite_weights_is_not_exported(tmp_path, quantize):
    keras.utils.set_random_seed(3)
    vectorizer = text.word_vectorizer(vocab_size=30, max_length=8)
    vectorizer.adapt(TEXTS)
    model = models.lstm_classifier(vocab_size=30, embedding_dim=4, lstm_units=4, max_length=8)
    bias = model.layers[-1].bias
    bias.assign(np.full(bias.shape, np.nan, "float32"))
    with pytest.raises(FloatingPointError, match=f"weight {bias.path!r} holds 1 non-finite values"):
        export.export_saved_model(model, tmp_path, "m", preprocessor=vectorizer, quantize=quantize)
    assert not os.listdir(tmp_path)


def test_text_generator_export_serves_in_a_strict_tf_only_process(tmp_path):
    corpus = ["the cat sat on the mat", "the dog sat on the log", "a cat is not a dog"] * 3
    tokenizer = text.WordPieceTokenizer.learn(corpus, vocab_size=60)
    keras.utils.set_random_seed(5)
    model = models.transformer_lm(tokenizer.vocabulary_size, max_length=24, d_model=16, num_heads=2,
                                  num_layers=1, ff_dim=32)
    assert_no_xla(export.export_text_generator(model, tokenizer, tmp_path, "lm", max_new_tokens=6))
    prompts = ["the cat", "", "the dog sat on the mat " * 10_000]
    expected_ids = []
    for prompt in prompts:
        ids = tokenizer(tf.constant([prompt])).to_list()[0][-(24 - 6):] or [tokenizer.unk_id]
        expected_ids.append(generation.generate(model, [ids], 6)[0, len(ids):].tolist())
    expected_logits = np.asarray(model(np.array([tokenizer(tf.constant(["the cat"])).to_list()[0]])))[0, -1]
    result = run_tf_only(f"""
        import json
        loaded = tf.saved_model.load(newest_version({str(tmp_path / "lm")!r}))
        prompts = ["the cat", "", "the dog sat on the mat " * 10_000]  # as in the test (too long for argv)
        out = loaded.signatures["serving_default"](prompt=tf.constant(prompts))
        logits = loaded.signatures["next_token_logits"](prompt=tf.constant(["the cat"]))["logits"]
        print(json.dumps(dict(text=[t.decode() for t in out["text"].numpy()],
                              ids=out["token_ids"].numpy().tolist(), logits=logits.numpy()[0].tolist())))
        sampling = dict(max_new_tokens=tf.constant(6), temperature=tf.constant(1.0), top_k=tf.constant(0),
                        top_p=tf.constant(0.9), seed=tf.constant(1))
        for name, signature in sorted(loaded.signatures.items()):
            empty = signature(prompt=tf.constant([], tf.string), **(sampling if name == "generate" else {{}}))
            print("empty batch:", name, sorted((k, v.shape.as_list()) for k, v in empty.items()))
        try:
            session_run(newest_version({str(tmp_path / "lm")!r}), "serving_default",
                        {{"prompt": np.array(b"the cat", dtype=object)}})
            print("rank-0 request: no error")
        except tf.errors.InvalidArgumentError:
            print("rank-0 request: InvalidArgumentError")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[0])
    assert report["ids"] == expected_ids
    assert report["text"][0] == tokenizer.detokenize(tf.constant([expected_ids[0]])).numpy()[0].decode()
    assert all(isinstance(t, str) and t for t in report["text"])
    np.testing.assert_allclose(report["logits"], expected_logits, atol=1e-4)
    assert "rank-0 request: InvalidArgumentError" in result.stdout
    assert "empty batch: serving_default [('text', [0]), ('token_ids', [0, 6])]" in result.stdout
    assert "empty batch: generate [('text', [0]), ('token_ids', [0, 6])]" in result.stdout
    assert f"empty batch: next_token_logits [('logits', [0, {tokenizer.vocabulary_size}])]" in result.stdout


def test_generate_signature_takes_sampling_parameters_per_request(tmp_path):
    tokenizer = text.CharTokenizer.learn(["the cat sat on the mat"])
    keras.utils.set_random_seed(11)
    model = models.transformer_lm(tokenizer.vocabulary_size, max_length=32, d_model=16, num_heads=2,
                                  num_layers=1, ff_dim=32)
    path = export.export_text_generator(model, tokenizer, tmp_path, "lm", max_new_tokens=8)
    assert_no_xla(path)
    result = run_tf_only(f"""
        import json
        loaded = tf.saved_model.load({path!r})
        generate = loaded.signatures["generate"]
        prompts = tf.constant(["the c", "", "sat " * 10_000])

        def request(prompt=prompts, max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0, seed=0):
            out = generate(prompt=prompt, max_new_tokens=tf.constant(max_new_tokens),
                           temperature=tf.constant(temperature), top_k=tf.constant(top_k),
                           top_p=tf.constant(top_p), seed=tf.constant(seed))
            return out["token_ids"].numpy().tolist()

        greedy = loaded.signatures["serving_default"](prompt=prompts)["token_ids"].numpy().tolist()
        report = dict(
            inputs=sorted(generate.structured_input_signature[1]),
            top_k_1=request(top_k=1, temperature=0.7, seed=5) == greedy,
            same_seed=request(seed=3, temperature=2.0) == request(seed=3, temperature=2.0),
            other_seeds=len({{str(request(seed=s, temperature=2.0)) for s in range(4)}}),
            short=request(max_new_tokens=3, top_k=1) == [row[:3] for row in greedy],
            empty=request(prompt=tf.constant([], tf.string)))
        errors = {{}}
        for bad in (dict(top_p=0.0), dict(temperature=-1.0), dict(temperature=float("nan")),
                    dict(max_new_tokens=9), dict(max_new_tokens=0), dict(top_k=-1)):
            try:
                request(**bad)
                errors[str(bad)] = "no error"
            except tf.errors.InvalidArgumentError as error:
                errors[str(bad)] = next(line for line in error.message.splitlines() if "must be" in line)
        report["errors"] = errors
        print(json.dumps(report))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["inputs"] == ["max_new_tokens", "prompt", "seed", "temperature", "top_k", "top_p"]
    assert report["top_k_1"] and report["same_seed"] and report["short"]
    assert report["other_seeds"] > 1
    assert report["empty"] == []
    assert report["errors"] == {
        "{'top_p': 0.0}": "assertion failed: [top_p must be in (0, 1]; received] [0]",
        "{'temperature': -1.0}": "assertion failed: [temperature must be a finite number > 0; received] [-1]",
        "{'temperature': nan}": "assertion failed: [temperature must be a finite number > 0; received] [nan]",
        "{'max_new_tokens': 9}": "assertion failed: [max_new_tokens must be in [1, 8]; received] [9]",
        "{'max_new_tokens': 0}": "assertion failed: [max_new_tokens must be in [1, 8]; received] [0]",
        "{'top_k': -1}": "assertion failed: [top_k must be in [0, 12] (0: no limit); received] [-1]"}


def _stored(path):
    """An export's int8 variables (shapes) and every constant of its functions, as numpy arrays."""
    from tensorflow.core.protobuf import saved_model_pb2

    checkpoint = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    shapes, dtypes = checkpoint.get_variable_to_shape_map(), checkpoint.get_variable_to_dtype_map()
    int8_variables = sorted(tuple(shapes[name]) for name, dtype in dtypes.items() if dtype == tf.int8)
    float_variables = [checkpoint.get_tensor(name) for name, dtype in dtypes.items() if dtype == tf.float32]
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    constants = [tf.make_ndarray(node.attr["value"].tensor)
                 for function in proto.meta_graphs[0].graph_def.library.function
                 for node in function.node_def if node.op == "Const"]
    return int8_variables, float_variables, constants


def _keras_int8_dense(model):
    """(int8 kernel, scale) of every Dense layer of Keras's weights-only int8 copy of `model`."""
    return [(np.asarray(layer._kernel), np.asarray(layer.kernel_scale))
            for layer in export.quantized_copy(model)._flatten_layers() if type(layer) is keras.layers.Dense]


# After the first request, the optimized graph TF Serving runs (a Session's partition graphs): how many int8
# constants are left (constant folding turned the int8 Dense kernels into float32 ones), and the probabilities.
_FOLDED = """
import json
from tensorflow.core.protobuf import config_pb2
graph = tf.Graph()
with graph.as_default():
    session = tf.compat.v1.Session(graph=graph)
    signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], {path!r}).signature_def["serving_default"]
    metadata = config_pb2.RunMetadata()
    probabilities = session.run(signature.outputs["probabilities"].name,
                                {{signature.inputs["text"].name: {sample!r}}},
                                options=config_pb2.RunOptions(output_partition_graphs=True), run_metadata=metadata)
nodes = [n for g in metadata.partition_graphs for n in list(g.node) + [m for f in g.library.function for m in f.node_def]]
left = sum(n.op == "Const" and n.attr["dtype"].type == tf.int8.as_datatype_enum for n in nodes)
print(json.dumps(dict(int8_constants_left=left, probabilities=probabilities.tolist())))
"""


def test_int8_export_serves_and_agrees_with_the_float_model(tmp_path, classifier):
    model, vectorizer = classifier
    path = export.export_saved_model(model, tmp_path, "int8", preprocessor=vectorizer, quantize="int8")
    assert_no_xla(path)
    assert all(v.dtype == "float32" for v in model.weights)  # the caller's model is not quantized
    int8_variables, float_variables, constants = _stored(path)
    assert int8_variables == [(30, 4)]  # the embedding table, a Keras int8 Embedding (the LSTM stays float32)
    [(kernel, scale)] = _keras_int8_dense(model)  # the classifier's: an int8 constant, exactly Keras's values
    assert [c.shape for c in constants if c.dtype == np.int8] == [(4, 1)]
    np.testing.assert_array_equal(next(c for c in constants if c.dtype == np.int8), kernel)
    assert any(c.shape == scale.shape and np.array_equal(c, scale) for c in constants)
    assert not any(v.shape == (4, 1) for v in float_variables)  # no float copy of that kernel stored
    sample = [" ".join(words) for words in zip(TEXTS, reversed(TEXTS), TEXTS[3:] + TEXTS[:3])] + TEXTS
    expected = np.asarray(model(vectorizer(tf.constant(sample))))[:, 0] >= 0.5
    result = run_tf_only(f"""
        import json
        serving = tf.saved_model.load({path!r}).signatures["serving_default"]
        print(json.dumps(serving(text=tf.constant({sample!r}))["label"].numpy().tolist()))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    agreement = np.mean(np.array(json.loads(result.stdout.splitlines()[-1])) == expected)
    assert agreement >= 0.98
    with pytest.raises(ValueError, match="'int8'; received 'int4'"):
        export.export_saved_model(model, tmp_path, "int4", preprocessor=vectorizer, quantize="int4")


def test_int8_dense_kernels_too_large_to_fold_stay_keras_int8_layers(tmp_path, classifier, monkeypatch):
    model, vectorizer = classifier
    monkeypatch.setattr(export, "FOLD_LIMIT_BYTES", 15)  # the classifier's 4x1 float32 kernel is 16 bytes
    path = export.export_saved_model(model, tmp_path, "int8", preprocessor=vectorizer, quantize="int8")
    int8_variables, _, constants = _stored(path)
    assert int8_variables == [(4, 1), (30, 4)]  # both Keras int8 layers, as model.quantize("int8") makes them
    assert not any(c.dtype == np.int8 for c in constants)
    sample = TEXTS[:5]
    result = run_tf_only(_FOLDED.format(path=path, sample=sample))
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[-1])["probabilities"]
    np.testing.assert_allclose(served, np.asarray(export.quantized_copy(model)(vectorizer(tf.constant(sample))))[:, 0],
                               atol=1e-6)


def test_int8_export_is_at_least_2_5x_smaller_on_disk(tmp_path):
    keras.utils.set_random_seed(0)
    vectorizer = text.word_vectorizer(vocab_size=40, max_length=8)
    vectorizer.adapt(TEXTS)
    model = keras.Sequential([keras.Input((8,), dtype="int32"), keras.layers.Embedding(4000, 64),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(2, activation="softmax")])

    def size(path):  # the whole export: saved_model.pb (where the int8 Dense kernels are) and variables/
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)

    float32 = size(export.export_saved_model(model, tmp_path, "float32", preprocessor=vectorizer))
    int8 = size(export.export_saved_model(model, tmp_path, "int8", preprocessor=vectorizer, quantize="int8"))
    parameters = model.count_params()  # 552,962, 4 bytes each in float32 (twice: Keras's ExportArchive
    assert float32 > 4 * parameters and int8 < float32 / 2.5  # saves every variable twice, int8 ones too)


def test_int8_export_of_a_bert_classifier_serves_keras_int8_weights_as_folded_constants(tmp_path):
    keras.utils.set_random_seed(3)
    texts = ["a good film", "a bad plot", "the film was dull", "a delight", "not good", "bad bad film"]
    preprocessor = text.BertPreprocessor(text.learn_bert_vocabulary(texts, vocab_size=60), max_length=16)
    backbone = models.bert_backbone(preprocessor.tokenizer.vocabulary_size, max_length=16, d_model=16,
                                    num_heads=2, num_layers=1, ff_dim=32)
    model = models.bert_classifier(backbone)
    head = model.get_layer("classifier")
    head.kernel.assign(np.random.default_rng(0).normal(0, 1, head.kernel.shape))  # not the uniform start
    path = export.export_saved_model(model, tmp_path, "bert", preprocessor=preprocessor, quantize="int8")
    assert_no_xla(path)
    layers = list(model._flatten_layers())
    int8_variables, float_variables, constants = _stored(path)
    # Embedding tables: Keras int8 Embedding layers (int8 variables).
    assert int8_variables == sorted(tuple(layer.embeddings.shape) for layer in layers
                                    if type(layer) is keras.layers.Embedding)
    # Dense kernels (the fused QKV among them): int8 constants holding exactly Keras's int8 values and scales,
    # and no float32 copy of them stored.
    dense = _keras_int8_dense(model)
    int8_constants = [c for c in constants if c.dtype == np.int8]
    assert len(int8_constants) == len(dense) and any(c.shape == (16, 48) for c in int8_constants)
    for kernel, scale in dense:
        assert any(c.shape == kernel.shape and np.array_equal(c, kernel) for c in int8_constants)
        assert any(c.shape == scale.shape and np.array_equal(c, scale) for c in constants)
    float_kernels = [np.asarray(layer.kernel) for layer in layers if type(layer) is keras.layers.Dense]
    assert not any(v.shape == k.shape and np.array_equal(v, k) for v in float_variables for k in float_kernels)

    sample = texts + [" ".join(reversed(t.split())) for t in texts] + ["", "film film film"]
    inputs = preprocessor(tf.constant(sample))
    # Weights only: Keras's int8 model computes exactly the float model with dequantized weights (quantizing
    # each layer's input too, Keras's default, is off by 5e-4 here).
    quantized_model = export.quantized_copy(model)
    dequantized = keras.models.clone_model(model)
    dequantized.set_weights(model.get_weights())
    for layer, quantized in zip(dequantized._flatten_layers(), quantized_model._flatten_layers()):
        if type(layer) is keras.layers.Dense:
            layer.kernel.assign(np.asarray(quantized._kernel, np.float32) / np.asarray(quantized.kernel_scale))
        elif type(layer) is keras.layers.Embedding:
            layer.embeddings.assign(np.asarray(quantized._embeddings, np.float32)
                                    / np.asarray(quantized.embeddings_scale)[:, None])
    np.testing.assert_allclose(quantized_model(inputs), dequantized(inputs), atol=1e-5)
    # Served as TF Serving runs it: no int8 constant is left once the graph is optimized (folded to float32
    # kernels), and the outputs are Keras's int8 model's; the labels agree with the float model's.
    result = run_tf_only(_FOLDED.format(path=path, sample=sample))
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.splitlines()[-1])
    assert served["int8_constants_left"] == 0
    np.testing.assert_allclose(served["probabilities"], quantized_model(inputs), atol=1e-5)
    expected = np.asarray(model(inputs)).argmax(-1)
    assert np.mean(np.argmax(served["probabilities"], -1) == expected) >= 0.98
