"""Bottleneck adapters for kerazoo Transformer models, and adapter-only save / load (LoRA, adapters, prompts)."""

import json
import os

import numpy as np

from kerazoo.finetune.freezing import adapter_weights, head_weights, layer_groups, train_only

_METADATA = "__kerazoo_adapters__"


def apply_adapters(model, adapter_dim, train_head=True):
    """Adds a `BottleneckAdapter` after the attention and the feed-forward net of every block; freezes the base.

    The adapters start as the identity (zero up-projection), so outputs are
    unchanged before training. Call before compiling.

    Args:
        model: a functional kerazoo Transformer model.
        adapter_dim: bottleneck width.
        train_head: whether the head's weights (the layers after the last block) train too.

    Returns:
        The number of trainable parameters.
    """
    if not isinstance(adapter_dim, int) or adapter_dim < 1:
        raise ValueError(f"`adapter_dim` must be a positive integer; received adapter_dim={adapter_dim!r}.")
    for name, layers in layer_groups(model).items():
        if name.startswith("block_"):
            layers[0].add_adapters(adapter_dim)
    train_only(model, head_weights(model) if train_head else [])
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def save_adapters(model, path):
    """Writes only what fine-tuning changed: the trainable weights and every adapter weight, as `.npz`.

    That is the LoRA factors, bottleneck adapters and soft prompts, plus any
    base weight left trainable (typically the task head): a small file that
    `load_adapters` puts back onto a freshly built base model. Written
    atomically.

    Args:
        model: the fine-tuned model.
        path: output file.

    Returns:
        The number of bytes written.
    """
    unique = list({id(v): v for v in adapter_weights(model) + list(model.trainable_weights)}.values())
    variables = {v.path: v for v in unique}
    if len(variables) < len(unique):
        raise ValueError(f"model {model.name!r} has trainable weights that share a path; they cannot be told "
                         "apart in an adapter file")
    arrays = {key: np.asarray(v.numpy()) for key, v in variables.items()}
    arrays[_METADATA] = np.array(json.dumps({"model": model.name, "weights": sorted(variables)}))
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_adapters(model, path):
    """Assigns the weights `save_adapters` wrote onto `model`, matched by variable path.

    Prepare `model` the way the saved one was (the same builder and
    pretrained weights, then the same `apply_lora` / `apply_adapters` /
    `prompt_tune` calls): every saved weight must find a variable of the
    same path and shape.

    Args:
        model: the model to load into.
        path: a file from `save_adapters`.

    Returns:
        The paths of the assigned variables.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not an adapter file from save_adapters ({error})") from None
    with archive:
        if _METADATA not in archive.files:
            raise ValueError(f"{path}: not an adapter file from save_adapters (no {_METADATA} entry)")
        variables = {v.path: v for v in model.weights}
        names = [name for name in archive.files if name != _METADATA]
        missing = [name for name in names if name not in variables]
        if missing:
            raise ValueError(f"{path}: {len(missing)} saved weights have no variable in model {model.name!r}, "
                             f"e.g. {missing[0]!r}; apply the same apply_lora / apply_adapters / prompt_tune "
                             "calls to the base model before loading")
        for name in names:
            value, variable = archive[name], variables[name]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"{path}: {name!r} has shape {tuple(value.shape)} but the model's variable has "
                                 f"{tuple(variable.shape)} (a different rank, adapter_dim or model size?)")
            variable.assign(value)
    return names
