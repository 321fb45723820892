"""LoRA (Hu et al., 2021) on the projections of kerazoo Transformer blocks, with Keras's own `enable_lora`; merge."""

from keras import ops

from kerazoo.finetune.freezing import head_weights, layer_groups, train_only

# Where LoRA can go in a `TransformerBlock`: the fused QKV projection, the
# attention output and the two feed-forward projections (all `Dense`).
TARGETS = {
    "qkv": lambda block: block.attention.qkv_dense,
    "attention_output": lambda block: block.attention.output_dense,
    "ff_inner": lambda block: block.ff_inner,
    "ff_output": lambda block: block.ff_output,
}


def apply_lora(model, rank, alpha=None, targets=("qkv", "attention_output"), train_head=True):
    """Adds trainable low-rank updates `(alpha / rank) * A @ B` to projection kernels and freezes the base.

    Uses `keras.layers.Dense.enable_lora`: A is He-uniform, B zero, so the
    outputs are unchanged until training moves B. Every base weight is
    frozen, except the head (the layers after the last block) when
    `train_head` is set: a new classifier must train. Call before compiling.

    Args:
        model: a functional kerazoo Transformer model (BERT classifier, transformer_lm, ...).
        rank: rank of the update.
        alpha: scale numerator (default: `rank`, a scale of 1).
        targets: any of `TARGETS` (`"qkv"`, `"attention_output"`, `"ff_inner"`, `"ff_output"`).
        train_head: whether the head's weights train too.

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
    if alpha is not None and not alpha > 0:
        raise ValueError(f"`alpha` must be positive; received alpha={alpha!r}.")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"`targets` must be a non-empty list of {sorted(TARGETS)}; received targets={targets!r}.")
    blocks = [layer for name, layers in layer_groups(model).items() if name.startswith("block_")
              for layer in layers]
    adapted = []
    for block in blocks:
        for target in targets:
            dense = TARGETS[target](block)
            if dense.lora_enabled:
                raise ValueError(f"{dense.path} already has LoRA (rank {dense.lora_rank}); merge_lora first.")
            dense.enable_lora(rank, lora_alpha=alpha)
            adapted.append(dense.path)
    train_only(model, head_weights(model) if train_head else [])
    return adapted


def merge_lora(model):
    """Folds every LoRA update into its base kernel and removes the LoRA weights.

    The merged model computes the same function with plain `Dense` layers,
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
        # In float32, whatever the compute dtype, then stored in the kernel's own dtype.
        update = (layer.lora_alpha / layer.lora_rank) * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)
        kernel = ops.cast(layer._kernel, "float32") + ops.reshape(update, layer._kernel.shape)
        layer._kernel.assign(ops.cast(kernel, layer._kernel.dtype))
        del layer.lora_kernel_a
        del layer.lora_kernel_b
        layer.lora_enabled, layer.lora_rank, layer.lora_alpha = False, None, None
        merged.append(layer.path)
    return merged
