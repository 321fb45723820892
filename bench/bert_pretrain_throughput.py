"""BERT pretraining tokens/s: kerazoo's bert_pretrainer (MLM + NSP) vs KerasHub's BertBackbone + BertMaskedLM (MLM).

Same size, batch, sequence length and number of masked positions; each library under each setting
(float32 with and without XLA; mixed_bfloat16 without XLA; mixed_bfloat16 with XLA fusing only element-wise ops,
kerazoo's CPU plan), measured interleaved in one process, medians of `--rounds` samples of `--steps`
train steps each. Prints every setting and the ratio of each library's best to the other's best.
Both read one constant batch through `data.prefetched` (tf.data autotuning off): with it on, each
`fit` call's iterator teardown stalled for seconds, and a third of the samples were that stall.
KerasHub is a benchmark-only dependency: install it in a separate environment, e.g.

    python -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e . keras-hub
    /tmp/bench-venv/bin/python bench/bert_pretrain_throughput.py --seq-len 64
"""

import argparse
import contextlib
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

import keras
from kerazoo import data as kz_data, models, training

SETTINGS = (("float32+XLA", True), ("float32", False), ("mixed_bfloat16", False), ("mixed_bfloat16+fusion", False))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--ff-dim", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-predictions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed sample")
    parser.add_argument("--rounds", type=int, default=5, help="timed samples per setting")
    parser.add_argument("--settings", nargs="+", choices=[name for name, _ in SETTINGS],
                        default=[name for name, _ in SETTINGS],
                        help="settings to measure (default: all; on a CPU without bfloat16 instructions the "
                             "float32 ones are the ones that count)")
    return parser.parse_args(argv)


def batch(args, rng):
    """One synthetic batch: ids, segments, padding (last quarter of half the rows), masked positions."""
    b, s, p = args.batch_size, args.seq_len, args.max_predictions
    token_ids = rng.integers(5, args.vocab_size, size=(b, s)).astype("int32")
    padding_mask = np.ones((b, s), "int32")
    padding_mask[::2, 3 * s // 4:] = 0
    token_ids[padding_mask == 0] = 0
    segment_ids = (np.arange(s)[None, :] >= s // 2).astype("int32") * padding_mask
    positions = np.sort(np.stack([rng.choice(np.arange(1, s // 2), p, replace=False) for _ in range(b)]), 1)
    labels = np.take_along_axis(token_ids, positions, 1)
    weights = np.ones((b, p), "float32")
    return dict(token_ids=token_ids, segment_ids=segment_ids, padding_mask=padding_mask,
                positions=positions.astype("int32"), labels=labels, weights=weights,
                is_next=rng.integers(0, 2, size=b).astype("int32"))


def kerazoo_model(args, plan, data):
    with plan.policy_scope():
        backbone = models.bert_backbone(args.vocab_size, args.seq_len, args.d_model, args.num_heads,
                                        args.num_layers, args.ff_dim, dropout=0.1)
        model = models.bert_pretrainer(backbone)
    training.compile_model(model, plan, optimizer=training.adamw(1e-4, weight_decay=0.01),
                           **models.pretraining_compile_args())
    x = {k: data[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    x["masked_positions"] = data["positions"]
    ds = tf.data.Dataset.from_tensors((x, {"mlm": data["labels"], "nsp": data["is_next"]},
                                       {"mlm": data["weights"], "nsp": np.ones_like(data["is_next"], "float32")}))
    return model, kz_data.prefetched(ds.repeat())


def keras_hub_model(args, plan, data):
    import keras_hub

    with plan.policy_scope():
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=args.vocab_size, num_layers=args.num_layers, num_heads=args.num_heads,
            hidden_dim=args.d_model, intermediate_dim=args.ff_dim, dropout=0.1, max_sequence_length=args.seq_len)
        model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    # The task's own loss and weighted accuracy, with the same optimizer and the plan's XLA setting.
    model.compile(optimizer=training.adamw(1e-4, weight_decay=0.01), jit_compile=plan.jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()])
    x = {k: data[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    x["mask_positions"] = data["positions"]
    return model, kz_data.prefetched(tf.data.Dataset.from_tensors((x, data["labels"], data["weights"])).repeat())


def main(argv=None):
    args = parse_args(argv)
    settings = [(name, jit) for name, jit in SETTINGS if name in args.settings]
    # Before anything is traced: TensorFlow reads the flags that restrict auto-clustering once.
    if any(name.endswith("+fusion") for name, _ in settings) and not training.fusible_clustering_available():
        raise SystemExit("error: the +fusion settings need TF_XLA_FLAGS without clustering flags of your own")
    data = batch(args, np.random.default_rng(0))
    tokens = args.steps * args.batch_size * args.seq_len
    runs = {}
    # Auto-clustering is process-wide and fixed when a function is first run: run the settings
    # without it first, then turn it on (the plan's scope, as the recipes train) for the "+fusion" ones.
    fusion = contextlib.ExitStack()
    for setting, jit in settings:
        precision = setting.split("+")[0]
        plan = training.TrainingPlan(precision, jit, setting, xla_fusion=setting.endswith("+fusion"))
        if plan.xla_fusion:
            fusion.enter_context(plan.scope())
        for library, build in (("kerazoo", kerazoo_model), ("keras-hub", keras_hub_model)):
            model, ds = build(args, plan, data)
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace / compile
            print(f"{library:>9s} {setting:<22s} first steps {time.perf_counter() - start:5.1f} s", flush=True)
            runs[(library, setting)] = (model, ds, [])
    for _ in range(args.rounds):
        for model, ds, samples in runs.values():
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
            samples.append(tokens / (time.perf_counter() - start))
    fusion.close()  # auto-clustering off again
    print(f"\nBERT pretraining, vocab {args.vocab_size}, d_model {args.d_model}, {args.num_layers} layers, "
          f"{args.num_heads} heads, ff {args.ff_dim}, batch {args.batch_size} x seq {args.seq_len}, "
          f"{args.max_predictions} masked positions; median of {args.rounds} x {args.steps} steps")
    best = {}
    for (library, setting), (_, _, samples) in runs.items():
        median = statistics.median(samples)
        print(f"{library:>9s} {setting:<22s} {median:9,.0f} tokens/s   (samples: "
              + ", ".join(f"{s:,.0f}" for s in samples) + ")")
        if median > best.get(library, ("", 0))[1]:
            best[library] = (setting, median)
    for setting, _ in settings:
        ratio = statistics.median(runs[("kerazoo", setting)][2]) / statistics.median(runs[("keras-hub", setting)][2])
        print(f"same setting {setting:<22s}: kerazoo MLM+NSP / keras-hub MLM = {ratio:.2f}x")
    print(f"best vs best: kerazoo ({best['kerazoo'][0]}) / keras-hub ({best['keras-hub'][0]}) = "
          f"{best['kerazoo'][1] / best['keras-hub'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
