"""Labeled text for classification: csv / tsv / JSON Lines files with clear errors for bad data."""

import csv
import dataclasses
import io
import json
import os

import numpy as np

TEXT_COLUMNS = ("text", "sentence", "headline", "review")
LABEL_COLUMNS = ("label", "is_sarcastic", "sentiment")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
_NAMED_LABELS = {"negative": 0, "neg": 0, "false": 0, "positive": 1, "pos": 1, "true": 1}


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

    def _subset(self, indices):
        return dataclasses.replace(self, texts=[self.texts[i] for i in indices], labels=self.labels[indices])


def load_labeled_text(path, text_column=None, label_column=None, format=None, binary=None,
                      on_decode_error="fail", encoding="utf-8"):
    """Reads labeled texts from a csv, tsv (both with a header row) or JSON Lines file.

    The text column is the first of `TEXT_COLUMNS` present (text, sentence,
    headline, review), the label column the first of `LABEL_COLUMNS` (label,
    is_sarcastic, sentiment), unless named. Labels may be integers, booleans,
    "positive"/"negative" (also pos/neg, true/false: 1/0) or any class names
    (numbered in sorted order). Surrounding whitespace of texts is removed.

    Args:
        path: the file.
        text_column, label_column: column (csv/tsv) or key (jsonl) names.
        format: "csv", "tsv" or "jsonl"; default from the extension
            (`.json` is read as JSON Lines).
        binary: if True, the labels must be exactly 0 and 1.
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
    texts, raw_labels = [], []
    for line_number, record, *_ in records:
        if text_key not in record or label_key not in record:
            raise ValueError(f"{path!r} line {line_number}: the record has no {text_key!r} or {label_key!r}.")
        label = record[label_key]
        if label is None or str(label).strip() == "":
            raise ValueError(f"{path!r} line {line_number}: the label ({label_key!r}) is missing.")
        texts.append(str(record[text_key] or "").strip())
        raw_labels.append(label)
    labels, label_names = _label_ids(raw_labels)
    if binary and (set(labels.tolist()) - {0, 1} or len(label_names) != 2):
        raise ValueError(f"{path!r}: binary labels (0/1) were asked for, but the labels are "
                         f"{list(label_names)}.")
    return LabeledText(texts, labels, label_names, skipped, path)


def _decoded_lines(path, encoding, on_decode_error):
    """[(line number, text)] of the file, decoding line by line so one bad record can be skipped."""
    lines, skipped = [], 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append((number, raw.decode(encoding)))
            except UnicodeDecodeError as error:
                if on_decode_error == "fail":
                    raise ValueError(f"{path!r} line {number}: bytes that are not valid {encoding} "
                                     f"({error.reason} at byte {error.start}); pass "
                                     "on_decode_error='skip' to drop such records and count them.") from None
                skipped += 1
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
    rows = csv.reader(io.StringIO("".join(line for _, line in lines)), delimiter=delimiter, quoting=quoting)
    header = None
    records = []
    for row in rows:
        number = numbers[min(rows.line_num, len(numbers)) - 1]
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            continue
        if len(row) != len(header):
            raise ValueError(f"{path!r} line {number}: {len(row)} fields where the header has "
                             f"{len(header)} ({header}).")
        records.append((number, dict(zip(header, row)), header))
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


def _label_ids(raw_labels):
    """Integer ids and class names for raw labels (ints, bools, numeric strings or names)."""
    normalised = []
    for label in raw_labels:
        if isinstance(label, bool):
            label = int(label)
        if isinstance(label, str):
            label = label.strip()
            key = label.lower()
            if key in _NAMED_LABELS:
                label = _NAMED_LABELS[key]
            elif label.lstrip("-").isdigit():
                label = int(label)
        normalised.append(label)
    if all(isinstance(label, int) for label in normalised):
        if min(normalised) < 0:
            raise ValueError(f"labels must be >= 0; found {min(normalised)}.")
        labels = np.array(normalised, dtype=np.int64)
        return labels, tuple(str(i) for i in range(int(labels.max()) + 1))
    names = sorted({str(label) for label in normalised})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(label)] for label in normalised], dtype=np.int64), tuple(names)
