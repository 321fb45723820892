"""Property-based tests of `load_labeled_text`: what is written is what is read, and bad files are ValueErrors."""

import csv
import io
import json
import os
import tempfile

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is in the `test` extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kerazoo import data

# KERAZOO_HYPOTHESIS_EXAMPLES=5000 for a longer search than CI's.
SETTINGS = settings(max_examples=int(os.environ.get("KERAZOO_HYPOTHESIS_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("arts", "news", "sci fi")
_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
# A label as written, with the class it must come back as: ints (in several spellings), booleans, names.
_int_labels = st.integers(-3, 10 ** 12).flatmap(lambda v: st.sampled_from(
    [(v, v), (str(v), v), (f" {v} ", v), (f"{v}.0", v), (float(v), v)]))
_labels = st.one_of(_int_labels, st.booleans().map(lambda b: (b, int(b))),
                    st.sampled_from(NAMES).map(lambda n: (n, n)))


def _write(content, suffix):
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "data" + suffix)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _serialise(records, format):
    if format == "jsonl":
        return "".join(json.dumps({"text": t, "label": l}, ensure_ascii=False) + "\n" for t, l in records)
    rows = [(text, str(label).lower() if isinstance(label, bool) else str(label)) for text, label in records]
    if format == "tsv":  # read with QUOTE_NONE: fields are written as they are
        return "text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([("text", "label"), *rows])
    return out.getvalue()


@st.composite
def _files(draw):
    format = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    texts = _texts.filter(lambda t: not set(t) & set("\t\n\r")) if format == "tsv" else _texts
    rows = draw(st.lists(st.tuples(texts, _labels), min_size=1, max_size=20))
    return format, [(text, written) for text, (written, _) in rows], [cls for _, (_, cls) in rows]


@SETTINGS
@given(_files())
def test_written_records_come_back_with_their_classes(case):
    format, records, classes = case
    path = _write(_serialise(records, format).encode("utf-8"), "." + format)
    if format == "csv":  # universal newlines: a CR inside a quoted field reads back as a line break
        records = [(t.replace("\r\n", "\n").replace("\r", "\n"), label) for t, label in records]
    expected_texts = [t.strip() for t, _ in records]
    if not any(expected_texts):
        with pytest.raises(ValueError, match=f"{path!r}: every text"):
            data.load_labeled_text(path)
        return
    loaded = data.load_labeled_text(path)
    assert loaded.texts == expected_texts and len(loaded.labels) == len(records)
    numeric = all(isinstance(c, int) for c in classes)
    names = sorted(set(classes)) if numeric else sorted({str(c) for c in classes})
    assert loaded.label_names == tuple(str(n) for n in names)
    assert [loaded.label_names[i] for i in loaded.labels] == [str(c) for c in classes]


_fragments = st.sampled_from(["text", "label", "sentence", ",", "\t", '"', "'", "\n", "\r", "\r\n", " ", "{",
                              "}", ":", "[", "]", "1", "0", "-", "2.5", "1e9", "99999999999999999999999",
                              "NaN", "true", "null", "²", "é", "\ufeff", "\x00", "\\", "a b"])


@SETTINGS
@given(st.sampled_from([".csv", ".tsv", ".jsonl"]),
       st.lists(st.one_of(_fragments, st.binary(max_size=4).map(lambda b: b.decode("latin-1"))), max_size=60),
       st.sampled_from(["utf-8", "latin-1"]))
def test_any_file_loads_or_is_a_value_error_naming_it(suffix, fragments, encoding):
    header = {".csv": "text,label\n", ".tsv": "text\tlabel\n", ".jsonl": ""}[suffix]
    path = _write((header + "".join(fragments)).encode(encoding, "replace"), suffix)
    try:
        loaded = data.load_labeled_text(path, on_decode_error="skip" if encoding == "latin-1" else "fail")
    except ValueError as error:
        assert repr(path) in str(error)
        return
    assert len(loaded.texts) == len(loaded.labels) >= 1
    assert 1 <= len(loaded.label_names) <= len(loaded.texts)  # never more classes than records
    assert loaded.labels.min() >= 0 and loaded.labels.max() < len(loaded.label_names)
