"""Workloads: model shapes and the prompt-then-decode loop that ``adaptive-sched run`` drives.

A model here is just what the attention stages see: the hidden size, the number of
heads and layers. A run is a prefill of the prompt (n = prompt length, empty cache)
followed by one decode step per generated token (n = 1, kv_len growing by one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ConfigError
from .types import Precision, Shape


@dataclass(frozen=True)
class ModelShape:
    """The attention geometry of a transformer."""

    name: str
    d: int
    heads: int
    layers: int


#: published geometries (hidden size, attention heads, layers) of common on-device models
MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("tiny", d=256, heads=4, layers=4),
        ModelShape("qwen2-0.5b", d=896, heads=14, layers=24),
        ModelShape("tinyllama-1.1b", d=2048, heads=32, layers=22),
        ModelShape("qwen2.5-1.5b", d=1536, heads=12, layers=28),
        ModelShape("llama-3.2-3b", d=3072, heads=24, layers=28),
        ModelShape("llama-2-7b", d=4096, heads=32, layers=32),
    )
}


def model_shape(name: str) -> ModelShape:
    """The geometry of a named model; a ``ConfigError`` lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"workload.model: unknown model {name!r} (known: {', '.join(MODELS)})") from None


@dataclass(frozen=True)
class Step:
    """One forward step of the whole model: every layer runs its attention at ``shape``."""

    phase: str  # "prefill" or "decode"
    token: int  # 0 for the prefill, then 1, 2, ... per generated token
    shape: Shape


def decode_steps(
    model: ModelShape, *, prompt: int, tokens: int, precision: Precision | str = "int8", batch: int = 1
) -> Iterator[Step]:
    """The prefill step, then ``tokens`` decode steps with a growing KV cache.

    >>> steps = list(decode_steps(MODELS["tiny"], prompt=4, tokens=2))
    >>> [(s.phase, s.shape.n, s.shape.kv_len) for s in steps]
    [('prefill', 4, 0), ('decode', 1, 4), ('decode', 1, 5)]
    """
    if prompt < 1:
        raise ConfigError(f"workload.prompt: must be >= 1, got {prompt}")
    if tokens < 0:
        raise ConfigError(f"workload.tokens: must be >= 0, got {tokens}")
    yield Step("prefill", 0, Shape(n=prompt, d=model.d, heads=model.heads, batch=batch, precision=precision))
    for t in range(tokens):
        shape = Shape(n=1, d=model.d, kv_len=prompt + t, heads=model.heads, batch=batch, precision=precision)
        yield Step("decode", t + 1, shape)
