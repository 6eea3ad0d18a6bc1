"""The model registry: small, configurable architectures and user factories.

Every model is split into a ``body`` (feature extractor) and a ``head`` (classifier), so
parameter names start with ``body.`` or ``head.``; partial-sharing strategies match on
those names. A config names a model by registry key (``mlp``, ``cnn``) or by
``"package.module:factory"``; the factory is called with ``input_shape``, ``num_classes``
and the config's other options, and must return an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

ModelFactory = Callable[..., nn.Module]


class BodyHead(nn.Module):
    """``head(body(x))``; the split that FedPer/FedRep/LG-FedAvg need."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (64,),
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected network on flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return BodyHead(nn.Sequential(*layers), nn.Linear(width, num_classes))


def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
) -> nn.Module:
    """Small conv net for ``(C, H, W)`` input: 3x3 conv + ReLU per entry of
    ``channels`` (max-pool after each while the image is at least 4 pixels wide),
    then a hidden dense layer."""
    if len(input_shape) != 3:
        raise ValueError(
            f"cnn needs image-shaped input (C, H, W), got {tuple(input_shape)}; "
            "use the data view 'image'"
        )
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
    return BodyHead(nn.Sequential(*layers), nn.Linear(hidden, num_classes))


MODELS: dict[str, ModelFactory] = {"mlp": mlp, "cnn": cnn}


def resolve_factory(name: str) -> ModelFactory:
    """Registry key or ``"package.module:factory"`` -> the factory callable."""
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load model factory {name!r}: {exc}") from None
        if not callable(factory):
            raise ValueError(f"model factory {name!r} is not callable")
        return factory
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, "
        "or 'package.module:factory'"
    )


def factory_options(factory: ModelFactory) -> set[str] | None:
    """Keyword options a factory accepts beyond input_shape/num_classes (None: any)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} - {"input_shape", "num_classes"}


def build_model(name: str, options: dict, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return resolve_factory(name)(input_shape=tuple(input_shape), num_classes=num_classes, **options)
