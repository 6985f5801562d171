"""The classification head of an HF sequence classifier, run on cached first-token states.

Training only the head keeps the exported model an ordinary
`AutoModelForSequenceClassification` checkpoint: the serving router runs the full model,
whose head then sees exactly the vector the head was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HeadForward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _bert(model: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    pooled = model.base_model.pooler(cls.unsqueeze(1))
    return model.classifier(model.dropout(pooled))


def _deberta_v2(model: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    pooled = model.pooler(cls.unsqueeze(1))
    return model.classifier(model.dropout(pooled))


def _roberta(model: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    return model.classifier(cls.unsqueeze(1))


def _distilbert(model: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(model.pre_classifier(cls))
    return model.classifier(model.dropout(hidden))


# model_type -> (head forward, parameter-name prefixes of the head)
HEADS: dict[str, tuple[HeadForward, tuple[str, ...]]] = {
    "bert": (_bert, ("bert.pooler.", "classifier.")),
    "deberta-v2": (_deberta_v2, ("pooler.", "classifier.")),
    "roberta": (_roberta, ("classifier.",)),
    "xlm-roberta": (_roberta, ("classifier.",)),
    "distilbert": (_distilbert, ("pre_classifier.", "classifier.")),
}


def supports_head_training(model: nn.Module) -> bool:
    return model.config.model_type in HEADS


def head_forward(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Logits of the model's head on first-token hidden states [batch, hidden]."""
    forward, _ = _head(model)
    return forward(model, features)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    _, prefixes = _head(model)
    params = [p for name, p in model.named_parameters() if name.startswith(prefixes)]
    if not params:
        raise ValueError(f"no head parameters with prefixes {prefixes} in {type(model).__name__}")
    return params


def _head(model: nn.Module) -> tuple[HeadForward, tuple[str, ...]]:
    model_type = model.config.model_type
    if model_type not in HEADS:
        raise ValueError(
            f"head-only training does not know the {model_type!r} head (known: "
            f"{sorted(HEADS)}); use `mode: finetune`"
        )
    return HEADS[model_type]
