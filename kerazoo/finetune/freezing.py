"""Freezing policies and a per-group count of what trains, for any kerazoo Transformer model."""

import dataclasses

import numpy as np

from kerazoo.layers import BottleneckAdapter, SoftPrompt, TransformerBlock

POLICIES = ("full", "head", "top_k", "embeddings", "all")
# The attributes holding the factors of Keras's own LoRA (`enable_lora`).
LORA_FACTORS = ("lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b")


def freeze(model, policy, k=None):
    """Chooses which base weights of a model train; call it before compiling.

    Layer groups are found by position: the layers with weights before the
    first `TransformerBlock` are the embeddings, the blocks come next, and
    everything after the last block (final norm, pooler, classifier, LM head)
    is the head. Adapter weights (LoRA, bottleneck adapters, soft prompts)
    always stay trainable.

    - `"full"`: every weight trains.
    - `"head"`: only the head.
    - `"top_k"`: the last `k` blocks and the head.
    - `"embeddings"`: everything but the embeddings.
    - `"all"`: no base weight trains (only adapters, if any).

    Args:
        model: a functional kerazoo model (e.g. `models.bert_classifier`, `models.transformer_lm`).
        policy: one of `POLICIES`.
        k: blocks trained with `"top_k"` (1 ... number of blocks).

    Returns:
        The number of trainable parameters.

    Example:

    >>> from kerazoo import models
    >>> lm = models.transformer_lm(vocab_size=50, max_length=8, d_model=16, num_heads=2, num_layers=2, ff_dim=32)
    >>> freeze(lm, "top_k", k=1) == lm.get_layer("block_1").count_params() + lm.get_layer("final_norm").count_params()
    True
    """
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES}; received policy={policy!r}.")
    groups = layer_groups(model)
    blocks = [name for name in groups if name.startswith("block_")]
    if policy == "top_k" and (not isinstance(k, int) or not 1 <= k <= len(blocks)):
        raise ValueError(f"`k` must be an integer in [1, {len(blocks)}] (the model's blocks) for policy "
                         f"'top_k'; received k={k!r}.")
    names = {"full": list(groups), "head": ["head"], "top_k": ["head", *blocks[len(blocks) - (k or 0):]],
             "embeddings": [name for name in groups if name != "embeddings"], "all": []}[policy]
    train_only(model, [v for name in names for layer in groups.get(name, []) for v in layer.weights])
    return count_params(model.trainable_weights)


def layer_groups(model):
    """The model's layers with weights by group: `embeddings`, `prompt`, `block_0` ..., `head`.

    Args:
        model: a functional model containing `TransformerBlock`s.

    Returns:
        A dict from group name to a list of layers, in model order.
    """
    layers = [layer for layer in model.layers if layer.weights]
    block_positions = [i for i, layer in enumerate(layers) if isinstance(layer, TransformerBlock)]
    if not block_positions:
        raise ValueError(f"model {model.name!r} has no TransformerBlock: freezing policies and adapters apply to "
                         "kerazoo Transformer models (models.bert_*, models.transformer_lm)")
    groups = {"embeddings": [], "prompt": []}
    for i, layer in enumerate(layers):
        if isinstance(layer, SoftPrompt):
            name = "prompt"
        elif i < block_positions[0]:
            name = "embeddings"
        elif i > block_positions[-1]:
            name = "head"
        else:
            name = layer.name
        groups.setdefault(name, []).append(layer)
    groups.setdefault("head", [])
    return {name: layers for name, layers in groups.items() if layers}


def adapter_weights(model):
    """The weights that parameter-efficient methods add: LoRA kernels, bottleneck adapters, soft prompts."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (BottleneckAdapter, SoftPrompt)):
            found += layer.weights
        elif getattr(layer, "lora_enabled", False):  # Dense / EinsumDense kernels, Embedding tables
            found += [getattr(layer, name) for name in LORA_FACTORS if hasattr(layer, name)]
    return _unique(found)


def train_only(model, variables):
    """Makes exactly `variables` and the model's adapter weights trainable; every other weight is frozen.

    Layers stay trainable and the choice is made per variable, so that a
    frozen Dense kernel and its trainable LoRA factors can sit in one layer.
    """
    keep = {id(v) for v in list(variables) + adapter_weights(model)}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        layer.trainable = True
        # Each layer's own trainable-kind variables (not seeds or statistics).
        for variable in layer._trainable_variables:
            variable.trainable = id(variable) in keep


def head_weights(model):
    """The weights of the layers after the last Transformer block (see `freeze`)."""
    return [v for layer in layer_groups(model).get("head", []) for v in layer.weights]


def count_params(variables):
    """Total number of values in `variables`, each counted once."""
    return int(sum(np.prod(v.shape) for v in _unique(variables)))


@dataclasses.dataclass
class TrainableReport:
    """Trainable and total parameters per layer group; `str()` is a table."""
    rows: list  # (group, trainable, total)

    @property
    def trainable(self):
        return sum(row[1] for row in self.rows)

    @property
    def total(self):
        return sum(row[2] for row in self.rows)

    def __str__(self):
        lines = [f"{'group':<12s} {'trainable':>12s} {'total':>12s}"]
        lines += [f"{group:<12s} {trainable:>12,d} {total:>12,d}" for group, trainable, total in self.rows]
        share = self.trainable / max(self.total, 1)
        lines.append(f"{'all':<12s} {self.trainable:>12,d} {self.total:>12,d}  ({share:.2%} trainable)")
        return "\n".join(lines)


def trainable_report(model, print_fn=print):
    """Counts trainable vs total parameters per layer group (see `layer_groups`), and prints the table.

    A variable shared by two layers (tied embeddings) is counted once, in its first group.

    Args:
        model: a functional kerazoo Transformer model.
        print_fn: where the table goes (None: nowhere).

    Returns:
        A `TrainableReport`.
    """
    seen, rows = set(), []
    trainable = {id(v) for v in model.trainable_weights}
    for group, layers in layer_groups(model).items():
        variables = [v for layer in layers for v in layer.weights if id(v) not in seen]
        seen.update(id(v) for v in variables)
        rows.append((group, count_params([v for v in variables if id(v) in trainable]), count_params(variables)))
    report = TrainableReport(rows)
    if print_fn:
        print_fn(str(report))
    return report


def _unique(variables):
    seen, unique = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            unique.append(v)
    return unique
