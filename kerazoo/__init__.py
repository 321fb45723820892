"""kerazoo: a Keras 3 / TensorFlow model zoo for language models."""

__version__ = "0.1.0"

import os  # noqa: E402
import sys  # noqa: E402

from kerazoo.native_logs import quiet_native_logs  # noqa: E402

# TensorFlow prints notices at import (oneDNN, CUDA stubs) that ignore
# TF_CPP_MIN_LOG_LEVEL; hide them unless the user set that variable.
with quiet_native_logs(enabled="tensorflow" not in sys.modules and "TF_CPP_MIN_LOG_LEVEL" not in os.environ):
    import tensorflow  # noqa: E402,F401

from kerazoo import data, export, finetune, generation, icl, layers, models, text, training, visualize  # noqa: E402,F401
