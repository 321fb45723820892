"""Shared input checks for kerazoo layers: errors that name the layer, the argument and the value."""


def check_rank(layer, input_shape, rank, layout):
    """Raises ValueError unless `input_shape` has `rank` dimensions.

    Args:
        layer: the layer doing the check (its name goes into the message).
        input_shape: the shape received.
        rank: the expected number of dimensions.
        layout: human-readable expected layout, e.g. "(batch, seq, d_model)".
    """
    if len(input_shape) != rank:
        raise ValueError(
            f"{layer.name} ({type(layer).__name__}) expects inputs of rank {rank} {layout}; "
            f"received shape {tuple(input_shape)} (rank {len(input_shape)}).")


def check_length(layer, seq_len, max_length):
    """Raises ValueError if a statically known `seq_len` exceeds `max_length`."""
    if seq_len is not None and seq_len > max_length:
        raise ValueError(
            f"{layer.name} ({type(layer).__name__}): input sequence length {seq_len} exceeds "
            f"max_length={max_length}; build the layer with max_length >= {seq_len} or "
            "truncate the input.")
