"""Hide TensorFlow's C++ log lines (oneDNN notices, cuInit errors, XLA banners) while Python's stderr stays."""

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_native_logs(enabled=True):
    """Sends what native code writes to file descriptor 2 to /dev/null inside the block.

    TensorFlow's C++ logging writes straight to descriptor 2, and some lines
    (those printed before its logger is initialised, at import) ignore
    `TF_CPP_MIN_LOG_LEVEL`. Python's own `sys.stderr` (warnings, tracebacks,
    `print(..., file=sys.stderr)`) is pointed at a copy of the real stderr for
    the duration, so only native lines disappear. Both are restored on exit.

    Args:
        enabled: False makes this a no-op (for `--verbose`).

    Example:

    >>> with quiet_native_logs():
    ...     print("Python output is kept")
    Python output is kept
    """
    if not enabled:
        yield
        return
    try:
        original = os.dup(2)
    except OSError:  # no descriptor 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    sys.stderr.flush()
    copy = os.fdopen(os.dup(original), "w", buffering=1, encoding=getattr(python_stderr, "encoding", None))
    os.dup2(devnull, 2)
    sys.stderr = copy
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        sys.stderr = python_stderr
        copy.close()
        os.close(original)
        os.close(devnull)


def tensorflow_logs_requested():
    """True when the user set `TF_CPP_MIN_LOG_LEVEL`: then TensorFlow's own filtering is left alone."""
    return "TF_CPP_MIN_LOG_LEVEL" in os.environ
