"""Labeled text for classification: csv / tsv / JSON Lines files with clear errors for bad data."""

import csv
import dataclasses
import io
import json
import os
import re

import numpy as np

TEXT_COLUMNS = ("text", "sentence", "headline", "review")
LABEL_COLUMNS = ("label", "is_sarcastic", "sentiment")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_NAMED_LABELS = {"negative": 0, "neg": 0, "false": 0, "positive": 1, "pos": 1, "true": 1}
# A numeric label: ASCII digits ("²" and "١" are names), an optional all-zero fraction.
_NUMBER = re.compile(r"([+-]?[0-9]+)(\.[0-9]*)?", re.ASCII)


@dataclasses.dataclass(frozen=True)
class LabeledText:
    """Texts with integer labels.

    Attributes:
        texts: list of str.
        labels: int64 array, `labels[i]` is the class of `texts[i]`.
        label_names: class names, index = label id.
        skipped: records skipped because their bytes could not be decoded.
        source: where the data came from (a path or a dataset name).
    """

    texts: list
    labels: np.ndarray
    label_names: tuple
    skipped: int = 0
    source: str = ""

    def __len__(self):
        return len(self.texts)

    def split(self, validation_fraction, seed=0):
        """A stratified, shuffled (train, validation) split.

        Args:
            validation_fraction: in (0, 1); the share of each class held out.
            seed: shuffling seed.

        Returns:
            `(train, validation)` `LabeledText`s.
        """
        if not 0 < validation_fraction < 1:
            raise ValueError(f"`validation_fraction` must be in (0, 1); received {validation_fraction!r}.")
        rng = np.random.default_rng(seed)
        held_out = []
        for label in np.unique(self.labels):
            members = rng.permutation(np.flatnonzero(self.labels == label))
            held_out.extend(members[:round(len(members) * validation_fraction)])
        held_out = np.isin(np.arange(len(self)), held_out)
        if held_out.all() or not held_out.any():
            raise ValueError(f"{len(self)} records are too few for a validation fraction of "
                             f"{validation_fraction}.")
        return tuple(self._subset(rng.permutation(np.flatnonzero(mask))) for mask in (~held_out, held_out))

    def with_label_names(self, label_names):
        """The same records with ids relative to `label_names` (e.g. a validation file's labels in training order).

        Args:
            label_names: the class names to number by; every class of this
                data must be among them.

        Returns:
            A `LabeledText` whose `label_names` is `tuple(label_names)`.
        """
        label_names = tuple(label_names)
        index = {name: i for i, name in enumerate(label_names)}
        missing = [name for name in self.label_names if name not in index]
        if missing:
            raise ValueError(f"{self.source or 'the data'!r}: labels {missing} are not among the classes "
                             f"{list(label_names)}.")
        ids = np.array([index[name] for name in self.label_names], dtype=np.int64)
        return dataclasses.replace(self, labels=ids[self.labels] if len(self) else self.labels,
                                   label_names=label_names)

    def _subset(self, indices):
        return dataclasses.replace(self, texts=[self.texts[i] for i in indices], labels=self.labels[indices])


def load_labeled_text(path, text_column=None, label_column=None, format=None, binary=None,
                      num_classes=None, on_decode_error="fail", encoding="utf-8"):
    """Reads labeled texts from a csv, tsv (both with a header row) or JSON Lines file.

    The text column is the first of `TEXT_COLUMNS` present (text, sentence,
    headline, review), the label column the first of `LABEL_COLUMNS` (label,
    is_sarcastic, sentiment), unless named. Labels may be integers (also as
    strings, "1" and "1.0" alike, and whole JSON floats), booleans,
    "positive"/"negative" (also pos/neg, true/false: 1/0) or any class names.
    The classes are the distinct labels in sorted order (numbers by value):
    labels 1 and 2 are two classes, "1" and "2", with ids 0 and 1, unless
    `num_classes` fixes the classes to 0 .. num_classes - 1. Surrounding
    whitespace of texts is removed; a UTF-8 byte-order mark is ignored; lines
    may end in LF, CRLF or CR.

    Args:
        path: the file.
        text_column, label_column: column (csv/tsv) or key (jsonl) names.
        format: "csv", "tsv" or "jsonl"; default from the extension
            (`.json` is read as JSON Lines).
        binary: if True, the labels must be exactly 0 and 1 (or names that
            mean them: true/false, positive/negative).
        num_classes: if given, the labels must be integers in
            [0, num_classes), which are then their own ids (a class may have
            no records), or at most `num_classes` names.
        on_decode_error: "fail" (raise, naming the line) or "skip" (drop the
            record and count it in `skipped`).
        encoding: the file's text encoding.

    Returns:
        A `LabeledText`.

    Example:

    >>> data = load_labeled_text("train.tsv")  # doctest: +SKIP
    >>> len(data), data.label_names            # doctest: +SKIP
    (67349, ('0', '1'))
    """
    path = os.fspath(path)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 2):
        raise ValueError(f"`num_classes` must be an integer >= 2; received {num_classes!r}.")
    if binary and num_classes not in (None, 2):
        raise ValueError(f"binary=True means two classes; received num_classes={num_classes!r}.")
    if on_decode_error not in ("fail", "skip"):
        raise ValueError(f"`on_decode_error` must be 'fail' or 'skip'; received {on_decode_error!r}.")
    if format is None:
        extension = os.path.splitext(path)[1].lower()
        if extension not in FORMATS:
            raise ValueError(f"cannot tell the format of {path!r} from its extension {extension!r}: "
                             f"supported are {sorted(FORMATS)}, or pass format='csv'|'tsv'|'jsonl'.")
        format = FORMATS[extension]
    elif format not in ("csv", "tsv", "jsonl"):
        raise ValueError(f"`format` must be 'csv', 'tsv' or 'jsonl'; received {format!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path!r}")
    lines, skipped = _decoded_lines(path, encoding, on_decode_error)
    if not any(line.strip() for _, line in lines):
        raise ValueError(f"{path!r} is empty: it has no records.")
    reader = _read_jsonl if format == "jsonl" else _read_delimited
    records = reader(path, lines, "\t" if format == "tsv" else ",")
    if not records:
        raise ValueError(f"{path!r} has a header but no records.")
    columns = records[0][1].keys() if format == "jsonl" else records[0][2]
    text_key = _pick_column(path, "text", text_column, TEXT_COLUMNS, columns)
    label_key = _pick_column(path, "label", label_column, LABEL_COLUMNS, columns)
    texts, labels = [], []
    for line_number, record, *_ in records:
        if text_key not in record or label_key not in record:
            raise ValueError(f"{path!r} line {line_number}: the record has no {text_key!r} or {label_key!r}.")
        label = record[label_key]
        if label is None or str(label).strip() == "":
            raise ValueError(f"{path!r} line {line_number}: the label ({label_key!r}) is missing.")
        text = record[text_key]
        if not isinstance(text, (str, type(None))):
            raise ValueError(f"{path!r} line {line_number}: the text ({text_key!r}) must be a string; "
                             f"found {type(text).__name__}.")
        texts.append((text or "").strip())
        labels.append((line_number, _normalise_label(label, path, line_number)))
    if not any(texts):
        raise ValueError(f"{path!r}: every text ({text_key!r}) is empty.")
    ids, label_names = _label_ids(labels, path, None if binary else num_classes)
    if binary:
        if not set(label_names) <= {"0", "1"}:
            raise ValueError(f"{path!r}: binary labels (0/1) were asked for, but the labels are "
                             f"{list(label_names)}.")
        ids, label_names = np.array([label for _, label in labels], dtype=np.int64), ("0", "1")
    return LabeledText(texts, ids, label_names, skipped, path)


def _decoded_lines(path, encoding, on_decode_error):
    """[(line number, text ending in "\\n")] of the file.

    Lines may end in LF, CRLF or CR; each is decoded on its own, so one bad
    record can be skipped. A UTF-8 byte-order mark is dropped.
    """
    lines, skipped = [], 0
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()  # bytes split on \n, \r\n and \r only
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as error:
            if on_decode_error == "fail":
                raise ValueError(f"{path!r} line {number}: bytes that are not valid {encoding} "
                                 f"({error.reason} at byte {error.start}); pass "
                                 "on_decode_error='skip' to drop such records and count them.") from None
            skipped += 1
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        lines.append((number, line + "\n"))
    return lines, skipped


def _read_jsonl(path, lines, _):
    records = []
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r} line {number}: not valid JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path!r} line {number}: expected a JSON object, found {type(record).__name__}.")
        records.append((number, record))
    return records


def _read_delimited(path, lines, delimiter):
    numbers = [number for number, _ in lines]
    # QUOTE_NONE for tsv: GLUE-style files contain bare quotes inside texts.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = csv.reader(io.StringIO("".join(line for _, line in lines), newline="\n"), delimiter=delimiter,
                      quoting=quoting)
    header = None
    records = []
    limit = csv.field_size_limit()
    csv.field_size_limit(2 ** 31 - 1)  # the default (128 KB) rejects long documents
    try:
        while True:
            # A quoted field may span lines: a record is numbered by its first line.
            number = numbers[min(rows.line_num, len(numbers) - 1)]
            row = next(rows, None)
            if row is None:
                break
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            if len(row) != len(header):
                raise ValueError(f"{path!r} line {number}: {len(row)} fields where the header has "
                                 f"{len(header)} ({header}).")
            records.append((number, dict(zip(header, row)), header))
    except csv.Error as error:
        raise ValueError(f"{path!r} line {number}: malformed {'tsv' if delimiter == chr(9) else 'csv'} "
                         f"({error}).") from None
    finally:
        csv.field_size_limit(limit)
    return records


def _pick_column(path, role, requested, defaults, columns):
    columns = list(columns)
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{path!r} has no {role} column {requested!r}; its columns are {columns}.")
        return requested
    for name in defaults:
        if name in columns:
            return name
    raise ValueError(f"{path!r}: no {role} column found among {columns} (looked for {list(defaults)}); "
                     f"name it with {role}_column=... (--{role}-column in the recipes).")


def _normalise_label(label, path, line_number):
    """An int (numbers, booleans, numeric strings, positive/negative...) or a str class name."""
    if isinstance(label, bool):
        return int(label)
    if isinstance(label, float) and not label.is_integer():
        raise ValueError(f"{path!r} line {line_number}: the label {label!r} is not a whole number "
                         "(classification labels are integers or names).")
    if isinstance(label, (int, float)):
        value = int(label)
    elif isinstance(label, str):
        label = label.strip()
        if label.lower() in _NAMED_LABELS:
            return _NAMED_LABELS[label.lower()]
        number = _NUMBER.fullmatch(label)
        if not number:
            return label
        if number.group(2) and number.group(2).strip(".0"):  # "2.0" is 2; "2.5" is not a class
            raise ValueError(f"{path!r} line {line_number}: the label {label!r} is not a whole number "
                             "(classification labels are integers or names).")
        value = int(number.group(1)) if len(number.group(1)) <= 20 else 2 ** 63
    else:
        raise ValueError(f"{path!r} line {line_number}: the label must be a number, a boolean or a name; "
                         f"found {type(label).__name__} {label!r:.60}.")
    if not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"{path!r} line {line_number}: the label {label!r:.60} is too large.")
    return value


def _label_ids(labels, path, num_classes):
    """Integer ids and class names for [(line number, normalised label)]."""
    values = [label for _, label in labels]
    if num_classes is not None:
        if all(isinstance(v, int) for v in values):
            for line_number, value in labels:
                if not 0 <= value < num_classes:
                    raise ValueError(f"{path!r} line {line_number}: the label {value} is outside [0, "
                                     f"{num_classes}) ({num_classes} classes were asked for).")
            return np.array(values, dtype=np.int64), tuple(str(i) for i in range(num_classes))
        if len(set(map(str, values))) > num_classes:
            raise ValueError(f"{path!r}: {num_classes} classes were asked for, but the labels are "
                             f"{sorted(set(map(str, values)))[:20]} ({len(set(map(str, values)))} classes).")
    if all(isinstance(v, int) for v in values):
        classes = sorted(set(values))
    else:
        classes = sorted({str(v) for v in values})
        values = [str(v) for v in values]
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), tuple(str(c) for c in classes)
