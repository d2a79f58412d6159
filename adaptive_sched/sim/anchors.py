"""End-to-end anchors: whole-model decode speeds on the simulated SoC against public figures.

A profile's ``anchors`` name published decode speeds of whole models on the real SoC. A
simulated decode token is priced from the same constants as the stages:

* every weight matrix of every layer (:meth:`~adaptive_sched.workload.ModelShape.layer_matrices`)
  and the output head is one GEMV (:func:`~adaptive_sched.sim.costs.gemv_s`), streamed at the
  anchor's ``weight_bytes`` per weight over its ``cores``;
* the attention core of every layer is the simulated ``attn`` stage at the model's geometry
  (its launches included; multi-head, an upper bound for grouped-query models);
* ``launches`` other kernels per layer cost ``launch_s`` each.

What is not modelled (norms, rotary embedding, sampling) is small next to the weight stream
at batch 1; each anchor's tolerance says how close the figure must be.

>>> rows = anchor_table()
>>> sorted({r.anchor.backend.value for r in rows})
['gpu', 'npu']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..types import Shape, Stage
from ..workload import MODELS
from .costs import gemv_s, stage_cost
from .loading import load_profile
from .schema import Anchor, DeviceProfile


@dataclass(frozen=True)
class TokenLatency:
    """Seconds of one simulated decode token, by part."""

    weights_s: float
    attention_s: float
    launches_s: float

    @property
    def total_s(self) -> float:
        return self.weights_s + self.attention_s + self.launches_s

    @property
    def tok_s(self) -> float:
        return 1.0 / self.total_s


def token_latency(profile: DeviceProfile, anchor: Anchor, kv_len: int) -> TokenLatency:
    """One decode token of ``anchor``'s model on its backend, attending to ``kv_len`` cached tokens."""
    model = MODELS[anchor.model]
    bp = profile.backends[anchor.backend]

    def gemv(k: int, n: int) -> float:
        size, cores = anchor.weight_bytes, anchor.cores
        return gemv_s(profile, anchor.backend, k, n, anchor.precision, weight_bytes=size, cores=cores)

    layer = sum(gemv(k, n) for _, k, n in model.layer_matrices())
    weights = model.layers * layer + gemv(model.d, model.vocab)
    shape = Shape(n=1, d=model.d, heads=model.heads, kv_len=kv_len, precision=anchor.precision)
    attention = model.layers * stage_cost(profile, Stage.ATTN, shape, anchor.backend).latency()
    launches = model.layers * anchor.launches * bp.launch_s
    return TokenLatency(weights_s=weights, attention_s=attention, launches_s=launches)


@dataclass(frozen=True)
class AnchorRow:
    """An anchor's simulated speed at the first and the last KV length of its range."""

    anchor: Anchor
    first: TokenLatency
    last: TokenLatency

    @property
    def ratios(self) -> tuple[float, float]:
        """Simulated over published speed, at the first and the last KV length."""
        return self.first.tok_s / self.anchor.tok_s, self.last.tok_s / self.anchor.tok_s

    @property
    def within_tolerance(self) -> bool:
        return all(abs(r - 1.0) <= self.anchor.tolerance for r in self.ratios)


def anchor_table(profile: DeviceProfile | str = "rk3588") -> list[AnchorRow]:
    """Every anchor of ``profile`` with its simulated speeds (noise and drift do not apply)."""
    if not isinstance(profile, DeviceProfile):
        profile = load_profile(profile)
    return [
        AnchorRow(a, token_latency(profile, a, a.kv_len[0]), token_latency(profile, a, a.kv_len[1]))
        for a in profile.anchors
    ]


def format_anchor_table(rows: Sequence[AnchorRow] | None = None, prefix: str = "") -> str:
    """The anchors as aligned text, each line starting with ``prefix`` (``"# "`` for YAML).

    Columns: the published speed, the simulated one at the first and the last KV length of
    the range, their ratios to the published one, and the share of the last token spent in
    the attention core.
    """
    rows = anchor_table() if rows is None else rows
    head = f"{'anchor':<24} {'kv_len':>10} {'public':>7} {'sim':>13} {'sim/public':>11} {'attn':>5}"
    lines = [head]
    for r in rows:
        a = r.anchor
        kv = f"{a.kv_len[0]}-{a.kv_len[1]}"
        sim = f"{r.first.tok_s:5.2f}-{r.last.tok_s:5.2f}"
        ratio = f"{r.ratios[0]:.2f}-{r.ratios[1]:.2f}"
        share = r.last.attention_s / r.last.total_s
        lines.append(f"{a.name:<24} {kv:>10} {a.tok_s:7.2f} {sim:>13} {ratio:>11} {share:5.0%}")
    return "\n".join(prefix + line for line in lines)
