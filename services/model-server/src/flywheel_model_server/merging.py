"""Merged copies of the model for hot LoRA adapters.

PEFT runs an unmerged LoRA adapter as two extra small matmuls (plus casts) on every targeted
projection of every token; on the CPU that cost 17 % of Gemma 3 270M's speed here (see the
README). A merged copy has the adapter folded into its weights, ``W' = W + scale * B @ A``, and
runs at the base model's speed.

A copy shares every tensor with the base model (embeddings, norms, the untargeted layers) except
the weights it merged, so it costs the memory of the targeted projections only (for Gemma 3 270M
with LoRA on all seven projections: ~100M parameters, ~200 MB in bfloat16). The base model itself
is never modified (PEFT's in-place merge/unmerge would round the base weights a little more on
every cycle), so requests for the base model and for other adapters are unaffected.

The merge is done in float32 and rounded once to the model's dtype. In float32 a merged copy
answers like the unmerged adapter up to float rounding (the tests compare greedy text and
log-probs); in bfloat16 the merged weights carry one bfloat16 rounding of ``W + ΔW`` where the
unmerged path rounds ``x·W`` and ``x·ΔW`` separately — differences of the size of bfloat16's own
noise, measured in the README.

Adapters that cannot be merged this way (DoRA, LoRA on embeddings, ``modules_to_save``, LoRA
biases) are served unmerged.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any


class NotMergeable(Exception):
    """The adapter needs PEFT's unmerged forward; the message says why."""


def merged_copy(model: Any, internal: str) -> tuple[Any, int]:
    """A copy of ``model`` (with PEFT LoRA layers injected) whose LoRA layers are plain Linear
    layers with adapter ``internal`` merged in. Returns the copy and the bytes it added."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    config = getattr(model, "peft_config", {}).get(internal)
    if config is not None:
        if getattr(config, "modules_to_save", None):
            raise NotMergeable("the adapter has modules_to_save")
        if getattr(config, "use_dora", False):
            raise NotMergeable("the adapter uses DoRA")
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in layers:
        if internal not in module.lora_A:
            continue
        if not isinstance(module, LoraLinear):
            raise NotMergeable(f"{name} is a {type(module).__name__} LoRA layer, not a linear one")
        if module.use_dora.get(internal, False) or getattr(module, "lora_bias", {}).get(internal, False):
            raise NotMergeable(f"{name} uses DoRA or a LoRA bias")
    # Share every tensor: deepcopy then only copies the modules' structure.
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    clone = copy.deepcopy(model, memo)
    added = 0
    with torch.no_grad():
        for name, module in list(clone.named_modules()):
            if not isinstance(module, LoraLayer):
                continue
            base: Any = module.get_base_layer()  # an nn.Linear: checked above for this adapter
            layer: Any
            if internal in module.lora_A:
                assert isinstance(module, LoraLinear)
                weight = base.weight
                delta = module.get_delta_weight(internal).to(device=weight.device, dtype=torch.float32)
                merged = (weight.to(torch.float32) + delta).to(weight.dtype)
                layer = torch.nn.Linear(
                    base.in_features, base.out_features, bias=False, device="meta", dtype=weight.dtype
                )
                layer.weight = torch.nn.Parameter(merged, requires_grad=False)
                layer.bias = base.bias
                added += merged.numel() * merged.element_size()
            else:
                layer = base
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, child, layer)
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in clone.__dict__:
            delattr(clone, attribute)
    clone.eval()
    return clone, added
