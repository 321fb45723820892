"""LoRA (Hu et al., 2021) on the projections of kerazoo Transformer blocks, with Keras's own `enable_lora`; merge."""

from keras import ops

from kerazoo.finetune.freezing import head_weights, layer_groups, train_only
from kerazoo.layers import TokenAndPositionEmbedding

# Where LoRA can go in a `TransformerBlock`: the fused QKV projection, the
# attention output and the two feed-forward projections (all `Dense`).
TARGETS = {
    "qkv": lambda block: block.attention.qkv_dense,
    "attention_output": lambda block: block.attention.output_dense,
    "ff_inner": lambda block: block.ff_inner,
    "ff_output": lambda block: block.ff_output,
}


def apply_lora(model, rank, alpha=None, targets=("qkv", "attention_output"), train_head=True,
               embedding_rank=None):
    """Adds trainable low-rank updates `(alpha / rank) * A @ B` to projection kernels and freezes the base.

    Uses `keras.layers.Dense.enable_lora`: A is He-uniform, B zero, so the
    outputs are unchanged until training moves B. Every base weight is
    frozen, except the head (the layers after the last block) when
    `train_head` is set: a new classifier must train. Call before compiling.

    With `embedding_rank`, the token embedding table gets a LoRA update of
    its own (`keras.layers.Embedding.enable_lora`; a tied output projection
    uses the updated table too). What a small encoder must learn for a task
    is often in its word vectors (on SST-2, LoRA with a frozen table stayed
    13–14 points below full fine-tuning of the recipe-size encoder), and a
    low-rank update moves every word along a few shared directions for
    `embedding_rank * (vocab_size + d_model)` parameters.

    Args:
        model: a functional kerazoo Transformer model (BERT classifier, transformer_lm, ...).
        rank: rank of the update.
        alpha: scale numerator (default: `rank`, a scale of 1).
        targets: any of `TARGETS` (`"qkv"`, `"attention_output"`, `"ff_inner"`, `"ff_output"`).
        train_head: whether the head's weights train too.
        embedding_rank: rank of a LoRA update of the token embedding table (default: none).

    Returns:
        The paths of the adapted layers.

    Example:

    >>> from kerazoo import models
    >>> lm = models.transformer_lm(vocab_size=50, max_length=8, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    >>> apply_lora(lm, rank=2)
    ['block_0/attention/qkv', 'block_0/attention/output']
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive integer; received rank={rank!r}.")
    if embedding_rank is not None and (not isinstance(embedding_rank, int) or embedding_rank < 1):
        raise ValueError(f"`embedding_rank` must be a positive integer or None; received "
                         f"embedding_rank={embedding_rank!r}.")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be positive; received alpha={alpha!r}.")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"`targets` must be a non-empty list of {sorted(TARGETS)}; received targets={targets!r}.")
    groups = layer_groups(model)
    # (layer, rank, alpha) for every layer to adapt, all checked before any changes.
    plan = [(TARGETS[target](block), rank, alpha) for name, layers in groups.items() if name.startswith("block_")
            for block in layers for target in targets]
    if embedding_rank:
        plan.append((_token_embedding(model, groups), embedding_rank, None))
    for layer, _, _ in plan:
        if layer.lora_enabled:
            raise ValueError(f"{layer.path} already has LoRA (rank {layer.lora_rank}); merge_lora first.")
    for layer, layer_rank, layer_alpha in plan:
        layer.enable_lora(layer_rank, lora_alpha=layer_alpha)
    train_only(model, head_weights(model) if train_head else [])
    return [layer.path for layer, _, _ in plan]


def _token_embedding(model, groups):
    """The `keras.layers.Embedding` of the model's token ids (inside its `TokenAndPositionEmbedding`)."""
    found = [layer.token_embedding for layer in groups["embeddings"] if isinstance(layer, TokenAndPositionEmbedding)]
    if len(found) != 1:
        raise ValueError(f"model {model.name!r} has {len(found)} TokenAndPositionEmbedding layers before its first "
                         "block; embedding_rank needs exactly one")
    return found[0]


def merge_lora(model):
    """Folds every LoRA update into its base kernel and removes the LoRA weights.

    The merged model computes the same function with plain `Dense` (and `Embedding`) layers,
    so it saves, reloads and exports like any other model. Recompile before
    training it again.

    Args:
        model: a model with LoRA layers (see `apply_lora`).

    Returns:
        The paths of the merged layers.
    """
    merged = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not getattr(layer, "lora_enabled", False):
            continue
        # Dense / EinsumDense keep `_kernel`, Embedding `_embeddings`, each with its own factor names.
        kind = "kernel" if hasattr(layer, "lora_kernel_a") else "embeddings"
        base, a, b = (getattr(layer, name) for name in (f"_{kind}", f"lora_{kind}_a", f"lora_{kind}_b"))
        # In float32, whatever the compute dtype, then stored in the base weight's own dtype.
        update = (layer.lora_alpha / layer.lora_rank) * ops.matmul(a, b)
        base.assign(ops.cast(ops.cast(base, "float32") + ops.reshape(update, base.shape), base.dtype))
        delattr(layer, f"lora_{kind}_a")
        delattr(layer, f"lora_{kind}_b")
        layer.lora_enabled, layer.lora_rank, layer.lora_alpha = False, None, None
        merged.append(layer.path)
    return merged
