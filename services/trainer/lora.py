"""LoRA training through `peft`, and the merged weights the policy service is sent.

The policy serves plain checkpoints, so a push carries W + B A (scaled) under the
checkpoint's own tensor names. With adapters the frozen base *is* the reference
policy (`disable_adapter()`), so no second copy of the model is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

ADAPTER = "default"


def apply_lora(
    model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: tuple[str, ...]
) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {
        prefix: module for prefix, module in model.get_base_model().named_modules() if isinstance(module, LoraLayer)
    }


def merged_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every checkpoint tensor (tied ones once), with adapters merged in; plain models pass through."""
    if not is_lora(model):
        for name, parameter in model.named_parameters():
            yield name, parameter.detach()
        return
    layers = _lora_layers(model)
    for name, parameter in model.get_base_model().named_parameters():
        if ".lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        prefix, _, leaf = clean.rpartition(".")
        tensor = parameter.detach()
        if leaf == "weight" and prefix in layers:
            with torch.no_grad():
                tensor = tensor + layers[prefix].get_delta_weight(ADAPTER).to(tensor.dtype)
        yield clean, tensor


def changed_names(model: torch.nn.Module) -> set[str]:
    """Checkpoint names of the weights the adapters change (all of them for full fine-tuning)."""
    if not is_lora(model):
        return {name for name, _ in model.named_parameters()}
    return {f"{prefix}.weight" for prefix in _lora_layers(model)}


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter checkpoint has tensors this model lacks: {unexpected[:3]}")
