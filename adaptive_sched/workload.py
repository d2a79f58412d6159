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
    """The attention geometry of a transformer, and the weights of the rest of a decoder layer.

    The attention stages see ``d``, ``heads`` and ``layers``. The other fields size the
    matrices a whole decode step streams (for end-to-end figures): K and V projections of
    ``kv_heads`` heads (grouped-query attention when fewer than ``heads``; default
    ``heads``), the MLP (``ffn`` wide, default ``4 * d``; three matrices when ``gated``
    (SwiGLU), two otherwise) and the output head over ``vocab`` tokens.

    >>> m = MODELS["qwen2-0.5b"]
    >>> m.head_dim, m.kv_dim, m.layer_weights, m.head_weights
    (64, 128, 14909440, 136134656)
    """

    name: str
    d: int
    heads: int
    layers: int
    kv_heads: int | None = None
    ffn: int | None = None
    vocab: int = 32000
    gated: bool = True

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (and of the V) projection."""
        return (self.kv_heads or self.heads) * self.head_dim

    def layer_matrices(self) -> tuple[tuple[str, int, int], ...]:
        """The weight matrices of one decoder layer as (name, K, N): the input is K wide, the output N."""
        d, ffn = self.d, self.ffn or 4 * self.d
        mlp = (("gate_up", d, 2 * ffn),) if self.gated else (("up", d, ffn),)
        return (("qkv", d, d + 2 * self.kv_dim), ("o", d, d), *mlp, ("down", ffn, d))

    @property
    def layer_weights(self) -> int:
        """Weights one decoder layer streams per token."""
        return sum(k * n for _, k, n in self.layer_matrices())

    @property
    def head_weights(self) -> int:
        """Weights of the output head (``d x vocab``), streamed once per token."""
        return self.d * self.vocab


#: published geometries of common on-device models (their Hugging Face ``config.json``:
#: hidden_size, num_attention_heads, num_hidden_layers, num_key_value_heads, intermediate_size,
#: vocab_size; RedPajama-INCITE-3B is GPT-NeoX, whose MLP is not gated)
MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("tiny", d=256, heads=4, layers=4),
        ModelShape("qwen2-0.5b", d=896, heads=14, layers=24, kv_heads=2, ffn=4864, vocab=151936),
        ModelShape("tinyllama-1.1b", d=2048, heads=32, layers=22, kv_heads=4, ffn=5632, vocab=32000),
        ModelShape("qwen2.5-1.5b", d=1536, heads=12, layers=28, kv_heads=2, ffn=8960, vocab=151936),
        ModelShape("redpajama-3b", d=2560, heads=32, layers=32, ffn=10240, vocab=50432, gated=False),
        ModelShape("llama-3.2-3b", d=3072, heads=24, layers=28, kv_heads=8, ffn=8192, vocab=128256),
        ModelShape("llama-2-7b", d=4096, heads=32, layers=32, ffn=11008, vocab=32000),
    )
}


def model_shape(name: str) -> ModelShape:
    """The geometry of a named model; a ``ConfigError`` lists the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"workload.model: unknown model {name!r} (known: {', '.join(MODELS)})") from None


@dataclass(frozen=True)
class ForwardStep:
    """One forward step of the whole model: every layer runs its attention at ``shape``."""

    phase: str  # "prefill" or "decode"
    token: int  # 0 for the prefill, then 1, 2, ... per generated token
    shape: Shape


def decode_steps(
    model: ModelShape, *, prompt: int, tokens: int, precision: Precision | str = "int8", batch: int = 1
) -> Iterator[ForwardStep]:
    """The prefill step, then ``tokens`` decode steps with a growing KV cache.

    >>> steps = list(decode_steps(MODELS["tiny"], prompt=4, tokens=2))
    >>> [(s.phase, s.shape.n, s.shape.kv_len) for s in steps]
    [('prefill', 4, 0), ('decode', 1, 4), ('decode', 1, 5)]
    """
    if prompt < 1:
        raise ConfigError(f"workload.prompt: must be >= 1, got {prompt}")
    if tokens < 0:
        raise ConfigError(f"workload.tokens: must be >= 0, got {tokens}")
    yield ForwardStep("prefill", 0, Shape(n=prompt, d=model.d, heads=model.heads, batch=batch, precision=precision))
    for t in range(tokens):
        shape = Shape(n=1, d=model.d, kv_len=prompt + t, heads=model.heads, batch=batch, precision=precision)
        yield ForwardStep("decode", t + 1, shape)
