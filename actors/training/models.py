"""The model registry: small, configurable architectures and user factories.

Every model is split into a ``body`` (feature extractor) and a ``head`` (classifier), so
parameter names start with ``body.`` or ``head.``; partial-sharing strategies match on
those names. A config names a model by registry key (``mlp``, ``cnn``, ``gru``, ``lstm``,
``transformer``) or by
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


def _as_sequence_shape(input_shape: Sequence[int], model: str) -> tuple[int, int]:
    """(steps, features) for sequence models: ``(T, F)`` as is, ``(C, H, W)`` as H rows."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(
        f"{model} needs sequence-shaped input (steps, features), got {shape}; "
        "use the data view 'sequence'"
    )


class RecurrentBody(nn.Module):
    """A GRU/LSTM over the rows; the last step's hidden state is the feature vector."""

    def __init__(self, cell: str, steps: int, features: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.steps, self.features = steps, features
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(features, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(len(x), self.steps, self.features))
        return out[:, -1]


def gru(input_shape: Sequence[int], num_classes: int, hidden: int = 64, layers: int = 1) -> nn.Module:
    """GRU over the rows of a ``(steps, features)`` sequence (an 8x8 digit: 8 rows of 8)."""
    steps, features = _as_sequence_shape(input_shape, "gru")
    return BodyHead(RecurrentBody("gru", steps, features, hidden, layers), nn.Linear(hidden, num_classes))


def lstm(input_shape: Sequence[int], num_classes: int, hidden: int = 64, layers: int = 1) -> nn.Module:
    """LSTM over the rows of a ``(steps, features)`` sequence."""
    steps, features = _as_sequence_shape(input_shape, "lstm")
    return BodyHead(RecurrentBody("lstm", steps, features, hidden, layers), nn.Linear(hidden, num_classes))


class TransformerBody(nn.Module):
    """Embed each step, add a learned position, encode, mean-pool over steps."""

    def __init__(self, steps: int, features: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.steps, self.features = steps, features
        self.embed = nn.Linear(features, dim)
        self.position = nn.Parameter(torch.zeros(steps, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(len(x), self.steps, self.features)) + self.position
        return self.encoder(h).mean(dim=1)


def transformer(
    input_shape: Sequence[int], num_classes: int, dim: int = 32, heads: int = 2, layers: int = 1
) -> nn.Module:
    """A tiny transformer encoder over sequence steps (rows of an image)."""
    if dim % heads:
        raise ValueError(f"transformer dim={dim} must be divisible by heads={heads}")
    steps, features = _as_sequence_shape(input_shape, "transformer")
    return BodyHead(TransformerBody(steps, features, dim, heads, layers), nn.Linear(dim, num_classes))


MODELS: dict[str, ModelFactory] = {
    "mlp": mlp, "cnn": cnn, "gru": gru, "lstm": lstm, "transformer": transformer,
}


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
