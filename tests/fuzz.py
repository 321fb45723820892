"""Fuzzing an exported SavedModel the way TF Serving runs it: random bytes and unicode, every batch size.

`fuzz_export` sends `count` generated strings (invalid UTF-8, every Unicode
plane, control characters, NULs, byte-order marks, very long and empty
strings) in batches of 0 to 64 (by default) to a signature in the strict TF-only process
of `tf_only`, and checks each answer: no exception, one output row per input,
and the outputs of the kind of model (finite probabilities in [0, 1] and a
matching label for a classifier; token ids in the vocabulary for a
generator or translator).
"""

import json

from tf_only import run_tf_only

_SCRIPT = """
import json, math
rng = np.random.default_rng({seed})
WORDS = ["good", "bad", "film", "not", "the", "a", "great", "dull", "[UNK]", "[PAD]", "##s", "<s>", "</s>"]
ODD = ["", " ", "\\t\\n\\r", "\\x00", "\\ufeff", "\\u200d", "\\u202e", "\\U0001F600" * 3, "e\\u0301", "\\u0000abc",
       "\\x85", "\\u2028", "\\uffff", "\\U0010FFFF"]


def random_string():
    kind = rng.integers(9)
    if kind == 0:  # raw bytes, mostly not UTF-8
        return rng.integers(0, 256, rng.integers(0, 64)).astype(np.uint8).tobytes()
    if kind == 1:  # code points from every plane (surrogates allowed through: invalid UTF-8)
        top = [0x80, 0x800, 0x10000, 0x110000][rng.integers(4)]
        chars = "".join(chr(c) for c in rng.integers(0, top, rng.integers(0, 40)))
        return chars.encode("utf-8", "surrogatepass")
    if kind == 2:  # words, punctuation and odd characters
        parts = rng.choice(WORDS + ODD + list(",.!?'\\"-"), rng.integers(0, 30))
        return " ".join(parts).encode("utf-8")
    if kind == 3:  # long
        return (" ".join(rng.choice(WORDS, 8)) + " ").encode() * int(rng.integers(1, 6000))
    if kind == 4:  # overlong and truncated UTF-8 sequences, lone continuation bytes
        return bytes(rng.choice([0xC0, 0xAF, 0xE0, 0x80, 0xF4, 0x90, 0xFF, 0xFE, 0x61], rng.integers(1, 12)))
    if kind == 5:
        return rng.choice(ODD).encode("utf-8") * int(rng.integers(1, 50))
    if kind == 6:  # whitespace only
        return "".join(rng.choice([" ", "\\t", "\\n", "\\u3000", "\\u00a0"], rng.integers(0, 20))).encode()
    if kind == 7:  # NULs inside words
        return b"\\x00".join(w.encode() for w in rng.choice(WORDS, rng.integers(1, 6)))
    return rng.choice(WORDS).encode() * int(rng.integers(1, 4))


def check_classifier(out, n):
    p, label = out["probabilities"].numpy(), out["label"].numpy()
    assert p.shape[0] == n and label.shape == (n,), (p.shape, label.shape)
    assert np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all(), p
    expected = (p >= 0.5).astype(np.int64) if p.ndim == 1 else p.argmax(-1)
    assert (label == expected).all(), (label, expected)


def check_generated(out, n):
    tokens = out["token_ids"].numpy()
    texts = out[{text_key!r}].numpy()
    assert tokens.shape[0] == n and texts.shape == (n,), (tokens.shape, texts.shape)
    assert ((0 <= tokens) & (tokens < {vocab_size})).all(), tokens


check = dict(classifier=check_classifier, generator=check_generated, translator=check_generated)[{kind!r}]
serving = tf.saved_model.load(newest_version({path!r})).signatures[{signature!r}]
sizes = {batch_sizes!r}
tried, failures, batches, i = 0, [], 0, 0
while tried < {count}:
    batch = [random_string() for _ in range(min(sizes[i % len(sizes)], {count} - tried))]
    i += 1
    try:
        check(serving(**{{{input_name!r}: tf.constant(np.array(batch, dtype=object).reshape([len(batch)]),
                                                      tf.string)}}), len(batch))
    except Exception as error:
        failures.append(dict(error=f"{{type(error).__name__}}: {{str(error)[:300]}}",
                             inputs=[repr(s[:80]) for s in batch[:4]]))
    tried += len(batch)
    batches += 1
print(json.dumps(dict(tried=tried, batches=batches, failures=len(failures), first=failures[:3])))
"""


def fuzz_export(model_dir, kind, count, seed=0, signature="serving_default", input_name="text", vocab_size=None,
                text_key="text", batch_sizes=(0, 1, 2, 3, 7, 16, 64), timeout=600):
    """Fuzzes the newest version under `model_dir` in the strict TF-only process.

    Args:
        model_dir: `EXPORT_DIR/NAME`.
        kind: "classifier", "generator" or "translator" (which outputs to check).
        count: strings to send.
        seed: of the string generator.
        signature, input_name: the endpoint and its input.
        vocab_size: for generators/translators: token ids must be below it.
        text_key: the string output of a generator ("text") or translator ("translation").
        batch_sizes: request sizes, used in turn.
        timeout: seconds.

    Returns:
        A dict: tried, batches, failures (count), first (up to 3 failures with their inputs).
    """
    result = run_tf_only(_SCRIPT.format(seed=seed, path=str(model_dir), kind=kind, count=count,
                                        signature=signature, input_name=input_name, vocab_size=vocab_size,
                                        text_key=text_key, batch_sizes=list(batch_sizes)), timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"the fuzzing process failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])
