"""Run Python code the way TF Serving runs an export: TensorFlow and tf-text kernels only.

In the subprocess `import keras` and `import kerazoo` fail, the project is not
on the path, and tensorflow-text's kernels are registered with
`tf.load_op_library` on the `.so` files of the installed package (its Python
package imports keras, so it cannot be imported there). `assert_no_xla` checks
an export's graph for what a server without XLA cannot run; every export test
calls it.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

_TEXT_OPS = pathlib.Path(importlib.util.find_spec("tensorflow_text").origin).parent / "python" / "ops"

PRELUDE = f"""
import sys
for blocked in ("keras", "tf_keras", "kerazoo", "tensorflow_text"):
    sys.modules[blocked] = None
sys.path = [p for p in sys.path if p not in ("", ".")]
import glob, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
for library in sorted(glob.glob({str(_TEXT_OPS)!r} + "/*.so")):
    tf.load_op_library(library)
try:
    import keras
    raise SystemExit("keras must not be importable here")
except ImportError:
    pass
try:
    import kerazoo
    raise SystemExit("kerazoo must not be importable here")
except ImportError:
    pass


def newest_version(model_dir):
    versions = sorted(int(v) for v in os.listdir(model_dir) if v.isdigit())
    return os.path.join(model_dir, str(versions[-1]))


def session_run(path, signature, feeds):
    \"\"\"Runs a signature through a TF1 Session by tensor name, as TF Serving's Predict: no shape checks.\"\"\"
    graph = tf.Graph()
    with graph.as_default():
        session = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature_def = meta.signature_def[signature]
        names = sorted(signature_def.outputs)
        options = config_pb2.CallableOptions(
            feed=[signature_def.inputs[k].name for k in feeds],
            fetch=[signature_def.outputs[k].name for k in names])
        run = session._make_callable_from_options(options)
        return dict(zip(names, run(*feeds.values())))
"""


def xla_ops(path):
    """What in a SavedModel would need XLA at serving time (TF Serving runs without it).

    Args:
        path: a SavedModel folder (one version).

    Returns:
        Sorted names: every op type starting with `Xla` in the graph or its
        function library (tf2xla ops such as `XlaDynamicUpdateSlice`, which
        have no kernel without XLA), and `_XlaMustCompile:<function>` for each
        function marked for XLA compilation (`jit_compile=True`).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        nodes = list(graph.node)
        for function in graph.library.function:
            nodes.extend(function.node_def)
            attr = function.attr.get("_XlaMustCompile")
            if attr is not None and attr.b:
                found.add(f"_XlaMustCompile:{function.signature.name}")
        found.update(node.op for node in nodes if node.op.startswith("Xla"))
    return sorted(found)


def assert_no_xla(path):
    """Fails (AssertionError listing them) when the export at `path` holds anything `xla_ops` finds."""
    found = xla_ops(path)
    assert not found, f"{path} needs XLA to serve: {found}"


def run_tf_only(script, timeout=300):
    """Runs `script` after `PRELUDE` in a fresh interpreter, in a temporary directory.

    Args:
        script: Python code; it may use `newest_version` and `session_run`.
        timeout: seconds.

    Returns:
        The `subprocess.CompletedProcess` (text mode).
    """
    code = PRELUDE + textwrap.dedent(script)
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, env={"PATH": "/usr/bin:/bin", "HOME": cwd})
