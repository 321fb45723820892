"""Labeled-text loading and its errors, the embedded samples, named datasets, LM windows."""

import json

import numpy as np
import pytest

from kerazoo import data


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_tsv_csv_and_jsonl_with_crlf(tmp_path):
    tsv = _write(tmp_path, "a.tsv", 'sentence\tlabel\nit \'s "fine" \t1\na dull film \t0\n')
    csv = _write(tmp_path, "a.csv", 'text,label\n"good, really",positive\nbad,negative\n')
    jsonl = _write(tmp_path, "a.json", '{"headline": "x", "is_sarcastic": 1}\r\n{"headline": "y", "is_sarcastic": 0}\r\n')
    for path, texts in ((tsv, ["it 's \"fine\"", "a dull film"]), (csv, ["good, really", "bad"]),
                        (jsonl, ["x", "y"])):
        loaded = data.load_labeled_text(path, binary=True)
        assert loaded.texts == texts and loaded.labels.tolist() == [1, 0] and loaded.source == path


def test_string_labels_are_numbered_in_sorted_order(tmp_path):
    path = _write(tmp_path, "t.jsonl", "\n".join(json.dumps({"text": t, "label": l}) for t, l in
                                                  [("a", "sports"), ("b", "arts"), ("c", "news"), ("d", "arts")]))
    loaded = data.load_labeled_text(path)
    assert loaded.label_names == ("arts", "news", "sports") and loaded.labels.tolist() == [2, 0, 1, 0]
    with pytest.raises(ValueError, match=r"binary labels \(0/1\) were asked for, but the labels are "
                                         r"\['arts', 'news', 'sports'\]"):
        data.load_labeled_text(path, binary=True)


def test_column_overrides_and_missing_columns(tmp_path):
    path = _write(tmp_path, "c.csv", "body,stars\nnice,1\n")
    with pytest.raises(ValueError, match=r"no text column found among \['body', 'stars'\].*text_column="):
        data.load_labeled_text(path)
    assert data.load_labeled_text(path, text_column="body", label_column="stars").texts == ["nice"]
    with pytest.raises(ValueError, match=r"has no label column 'score'; its columns are \['body', 'stars'\]"):
        data.load_labeled_text(path, text_column="body", label_column="score")


@pytest.mark.parametrize("name,content,message", [
    ("empty.tsv", "", "is empty: it has no records"),
    ("blank.jsonl", "\n\n", "is empty: it has no records"),
    ("header.tsv", "text\tlabel\n", "has a header but no records"),
    ("nolabel.tsv", "text\tlabel\nok\t1\nhm\t\n", "line 3: the label .'label'. is missing"),
    ("fields.csv", "text,label\na,1,extra\n", "line 2: 3 fields where the header has 2"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": oops}\n', "line 2: not valid JSON"),
    ("list.jsonl", '["a", 1]\n', "line 1: expected a JSON object, found list"),
    ("data.txt", "a\n", r"cannot tell the format .*'.txt'"),
])
def test_bad_files_have_clear_errors(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        data.load_labeled_text(_write(tmp_path, name, content))


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.tsv"):
        data.load_labeled_text(str(tmp_path / "nope.tsv"))
    path = _write(tmp_path, "a.tsv", "text\tlabel\na\t1\n")
    with pytest.raises(ValueError, match="on_decode_error.*'ignore'"):
        data.load_labeled_text(path, on_decode_error="ignore")
    with pytest.raises(ValueError, match="format.*'xml'"):
        data.load_labeled_text(path, format="xml")


def test_undecodable_bytes_fail_or_are_skipped_and_counted(tmp_path):
    path = _write(tmp_path, "b.tsv", b"text\tlabel\ngood\t1\nbad \xff\xfe\t0\nfine\t1\n")
    with pytest.raises(ValueError, match=r"line 3: bytes that are not valid utf-8.*on_decode_error='skip'"):
        data.load_labeled_text(path)
    loaded = data.load_labeled_text(path, on_decode_error="skip")
    assert loaded.texts == ["good", "fine"] and loaded.skipped == 1


def test_stratified_split_is_deterministic_and_disjoint():
    corpus = data.sample_sentiment()
    train, val = corpus.split(0.25, seed=4)
    again_train, again_val = corpus.split(0.25, seed=4)
    assert train.texts == again_train.texts and val.texts == again_val.texts
    assert len(val) == 1000 and val.labels.sum() == 500
    assert not set(train.texts) & set(val.texts) and len(train) + len(val) == len(corpus)
    with pytest.raises(ValueError, match="validation_fraction"):
        corpus.split(1.0)


def test_sample_sentiment_is_balanced_distinct_and_order_sensitive():
    corpus = data.sample_sentiment()
    assert len(corpus) == 4000 and corpus.labels.sum() == 2000 and len(set(corpus.texts)) == 4000
    label = dict(zip(corpus.texts, corpus.labels))
    generated = {text: lab for _, text, lab in data.sample._reviews()}
    assert all(generated[text] == lab for text, lab in label.items())
    # Negation flips, and the clause after "but" decides: same words, other order, other label.
    assert generated["the film was not bad at all"] == 1 and generated["the film was bad"] == 0
    assert generated["the plot was good, but the ending was bad"] == 0
    assert generated["the plot was bad, but the ending was good"] == 1
    assert sum(" not " in t or t.startswith("i did not") for t in corpus.texts) > 600


def test_named_datasets_and_offline_imdb(monkeypatch):
    assert data.load_dataset("sample").texts == data.sample_sentiment().texts
    with pytest.raises(ValueError, match=r"unknown dataset 'sst3'; known datasets are \['sample', 'imdb'\]"):
        data.load_dataset("sst3")
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")
    monkeypatch.setattr(data.datasets, "_online", lambda timeout=3.0: False)
    with pytest.raises(ConnectionError, match="imdb dataset must be downloaded.*--dataset sample"):
        data.load_dataset("imdb")
    assert data.decode_imdb([[1, 4, 5, 2, 6]], {"the": 1, "film": 2, "rocks": 3}) == ["the film rocks"]


def test_corpus_reading_splitting_and_windows(tmp_path):
    first, second = _write(tmp_path, "a.txt", "abc"), _write(tmp_path, "b.txt", "déf")
    assert data.read_text([first, second]) == "abc\ndéf"
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        data.read_text(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="the corpus is empty"):
        data.read_text(_write(tmp_path, "e.txt", "  \n"))
    with pytest.raises(ValueError, match=r"not valid utf-8: undecodable byte at offset 2"):
        data.read_text(_write(tmp_path, "x.txt", b"ab\xff"))
    assert data.split_text("0123456789", 0.2) == ("01234567", "89")
    assert "Lighthouse" in data.sample_corpus()
    x, y = next(iter(data.lm_dataset(np.arange(50), seq_len=6, batch_size=5, seed=1)))
    assert x.shape == (5, 6) and (np.asarray(y) == np.asarray(x) + 1).all()
    batches = list(data.lm_dataset(np.arange(20), seq_len=6, batch_size=2, shuffle=False))
    assert [b[0].numpy()[:, 0].tolist() for b in batches] == [[0, 6], [12]]
    with pytest.raises(ValueError, match="has 5 tokens: too few for windows of seq_len \\+ 1 = 7"):
        data.lm_dataset(np.arange(5), seq_len=6, batch_size=1)


def test_a_huge_numeric_label_is_one_class_not_a_range(tmp_path):
    """Labels were numbered range(max + 1): one `1000000000` label asked for a billion class names."""
    path = _write(tmp_path, "big.csv", "text,label\n" + "a,0\nb,1\n" * 10 + "x,1000000000\n")
    loaded = data.load_labeled_text(path)
    assert loaded.label_names == ("0", "1", "1000000000") and loaded.labels[-1] == 2
    with pytest.raises(ValueError, match=r"big.csv' line 22: the label 1000000000 is outside \[0, 2\) "
                                         r"\(2 classes were asked for\)"):
        data.load_labeled_text(path, num_classes=2)
    with pytest.raises(ValueError, match=r"huge.csv' line 3: the label '9{30}' is too large"):
        data.load_labeled_text(_write(tmp_path, "huge.csv", "text,label\na,1\nb," + "9" * 30 + "\n"))


def test_labels_are_normalised_by_value(tmp_path):
    path = _write(tmp_path, "n.jsonl", "".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in
                                               [("a", 1), ("b", 1.0), ("c", "2"), ("d", " 2.00 "), ("e", True)]))
    loaded = data.load_labeled_text(path)
    assert loaded.label_names == ("1", "2") and loaded.labels.tolist() == [0, 0, 1, 1, 0]
    fixed = data.load_labeled_text(path, num_classes=3)  # 0 .. 2, class 0 empty because asked for
    assert fixed.label_names == ("0", "1", "2") and fixed.labels.tolist() == [1, 1, 2, 2, 1]
    with pytest.raises(ValueError, match=r"binary labels \(0/1\) were asked for, but the labels are \['1', '2'\]"):
        data.load_labeled_text(path, binary=True)
    negative = _write(tmp_path, "pm.tsv", "text\tlabel\na\t-1\nb\t+1\nc\t-1\n")
    assert data.load_labeled_text(negative).label_names == ("-1", "1")
    for bad, shown in (("0.5", "'0.5'"), ("1e400", None)):
        path = _write(tmp_path, "f.tsv", f"text\tlabel\na\t1\nb\t{bad}\n")
        if shown:
            with pytest.raises(ValueError, match=rf"f.tsv' line 3: the label {shown} is not a whole number"):
                data.load_labeled_text(path)
        else:  # not a number pattern: a class name
            assert data.load_labeled_text(path).label_names == ("1", "1e400")
    with pytest.raises(ValueError, match=r"line 1: the label nan is not a whole number"):
        data.load_labeled_text(_write(tmp_path, "nan.jsonl", '{"text": "a", "label": NaN}\n'))
    with pytest.raises(ValueError, match=r"line 1: the label must be a number, a boolean or a name; found list"):
        data.load_labeled_text(_write(tmp_path, "l.jsonl", '{"text": "a", "label": [1]}\n'))
    with pytest.raises(ValueError, match=r"3 classes were asked for, but the labels are \['a', 'b', 'c', 'd'\]"):
        data.load_labeled_text(_write(tmp_path, "s.tsv", "text\tlabel\nx\ta\nx\tb\nx\tc\nx\td\n"), num_classes=3)


def test_with_label_names_renumbers_a_validation_subset(tmp_path):
    train = data.load_labeled_text(_write(tmp_path, "t.tsv", "text\tlabel\na\t0\nb\t1\nc\t2\n"))
    val = data.load_labeled_text(_write(tmp_path, "v.tsv", "text\tlabel\na\t2\nb\t0\n"))
    assert val.label_names == ("0", "2") and val.labels.tolist() == [1, 0]
    renumbered = val.with_label_names(train.label_names)
    assert renumbered.label_names == ("0", "1", "2") and renumbered.labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"t.tsv': labels \['1'\] are not among the classes \['0', '2'\]"):
        train.with_label_names(val.label_names)


@pytest.mark.parametrize("name,content,message", [
    ("open.csv", "text,label\n\"" + "x" * 200_000 + "\",1\n\"a\nb,0\n",
     r"open.csv' line 3: 1 fields where the header has 2"),  # the quote opened on line 3 never closes
    ("super.tsv", "text\tlabel\na\t1\nb\t\u00b2\n", None),  # '²' is a class name, not int('²')
    ("empty.tsv", "text\tlabel\n \t1\n\t0\n", r"empty.tsv': every text \('text'\) is empty"),
    ("nontext.jsonl", '{"text": {"a": 1}, "label": 1}\n', r"line 1: the text \('text'\) must be a string"),
])
def test_parser_errors_name_the_file_and_line(tmp_path, name, content, message):
    path = _write(tmp_path, name, content)
    if message is None:
        assert data.load_labeled_text(path).label_names == ("1", "\u00b2")
        return
    with pytest.raises(ValueError, match=message):
        data.load_labeled_text(path)


def test_long_fields_cr_line_endings_and_bom(tmp_path):
    long_text = "word " * 40_000  # 200 KB: more than csv's default field limit
    path = _write(tmp_path, "long.csv", f'text,label\n"{long_text}",1\nshort,0\n')
    assert data.load_labeled_text(path).texts == [long_text.strip(), "short"]
    import csv
    assert csv.field_size_limit() == 131072  # restored
    for ending in ("\r", "\r\n", "\n"):
        path = _write(tmp_path, "cr.tsv", ending.join(["text\tlabel", "a\t1", "b\t0", ""]))
        assert data.load_labeled_text(path).texts == ["a", "b"]
    bom = _write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\nhi,1\n")
    assert data.load_labeled_text(bom).texts == ["hi"]
    bad = _write(tmp_path, "cr_bad.csv", b"text,label\ra,1\rb,1,2\r")
    with pytest.raises(ValueError, match=r"cr_bad.csv' line 3: 3 fields where the header has 2"):
        data.load_labeled_text(bad)
