"""Lightweight fine-tuning: freezing, LoRA, bottleneck adapters, prompt tuning, adversarial and meta-learning.

Each method prepares a built kerazoo model before it is compiled; methods
combine ("mixed methods"), e.g. LoRA + adapters, or any of them inside an
`AdversarialModel`. `save_adapters` / `load_adapters` ship only what
changed.
"""

from kerazoo.finetune.adapters import apply_adapters, load_adapters, save_adapters
from kerazoo.finetune.adversarial import AdversarialModel
from kerazoo.finetune.freezing import (POLICIES, TrainableReport, adapter_weights, count_params, freeze, layer_groups,
                                       trainable_report, train_only)
from kerazoo.finetune.lora import TARGETS as LORA_TARGETS
from kerazoo.finetune.lora import apply_lora, merge_lora
from kerazoo.finetune.meta import adapt, reptile
from kerazoo.finetune.prompt import prompt_tune

__all__ = [
    "AdversarialModel",
    "LORA_TARGETS",
    "POLICIES",
    "TrainableReport",
    "adapt",
    "adapter_weights",
    "apply_adapters",
    "apply_lora",
    "count_params",
    "freeze",
    "layer_groups",
    "load_adapters",
    "merge_lora",
    "prompt_tune",
    "reptile",
    "save_adapters",
    "train_only",
    "trainable_report",
]
