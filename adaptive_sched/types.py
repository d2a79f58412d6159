"""Value types shared by every module: stages, backends, precisions, shapes, decisions.

All are immutable (frozen dataclasses and string enums) so they can be used as dict
keys, shared between threads and logged without copying.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple


class Stage(str, Enum):
    """The two stages of an attention layer."""

    QKV = "qkv"
    """QKV projection: ``X[b, n, d] @ W[d, 3d] + bias`` (GEMM in prefill, GEMV in decode)."""
    ATTN = "attn"
    """Attention core: ``softmax(Q K^T / sqrt(h_d) + mask) V`` per head over the KV cache."""

    def __str__(self) -> str:
        return self.value


class Backend(str, Enum):
    """Processors a stage can run on. Configs, logs and scripts use these names."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"

    def __str__(self) -> str:
        return self.value


class Precision(str, Enum):
    """Numeric precision of a stage. INT8 is symmetric with int32 accumulation."""

    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @property
    def itemsize(self) -> int:
        """Bytes per element of activations and weights."""
        return 2 if self is Precision.FP16 else 1

    @property
    def code(self) -> int:
        """The paper's ``P`` feature: 0 for FP16, 1 for INT8."""
        return 0 if self is Precision.FP16 else 1


_ENUM_BY_VALUE: dict[tuple[type, str], Enum] = {}


def _parse_enum(enum_type: type[Enum], value: Any, name: str) -> Any:
    if value.__class__ is enum_type:
        return value
    found = _ENUM_BY_VALUE.get((enum_type, value)) if isinstance(value, str) else None
    if found is not None:
        return found
    try:
        return enum_type(str(value).lower())
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"{name}: unknown value {value!r} (expected one of {allowed})") from None


for _enum in (Stage, Backend, Precision):
    for _member in _enum:
        _ENUM_BY_VALUE[(_enum, _member.value)] = _member


def parse_stage(value: Stage | str) -> Stage:
    """``"qkv"`` or ``Stage.QKV`` -> ``Stage.QKV``; anything else is a ``ValueError``."""
    return _parse_enum(Stage, value, "stage")


def parse_backend(value: Backend | str) -> Backend:
    """``"gpu"`` or ``Backend.GPU`` -> ``Backend.GPU``; anything else is a ``ValueError``."""
    return _parse_enum(Backend, value, "backend")


def parse_precision(value: Precision | str) -> Precision:
    """``"int8"`` or ``Precision.INT8`` -> ``Precision.INT8``; anything else is a ``ValueError``."""
    return _parse_enum(Precision, value, "precision")


def length_bucket(length: int, exact_up_to: int) -> int:
    """A sequence or KV length's bucket: exact up to ``exact_up_to``, then quarter octaves.

    Beyond ``exact_up_to`` a length keeps its top three bits only (four buckets per doubling),
    so a bucket reads as its first length and never as a shorter exact one.

    >>> [length_bucket(x, 16) for x in (16, 17, 20, 300, 319, 320, 384)]
    [16, 16, 20, 256, 256, 320, 384]
    """
    if length <= exact_up_to:
        return length
    low = length.bit_length() - 3
    return length >> low << low


def _check_int(name: str, value: Any, minimum: int) -> int:
    if type(value) is int and value >= minimum:  # the common case, kept cheap
        return value
    # bool is an int subclass; Shape(n=True) is a bug, not a sequence length of 1.
    if isinstance(value, bool) or (not isinstance(value, (int,)) and not _is_integral_float(value)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _is_integral_float(value: Any) -> bool:
    # numpy integers and floats such as 64.0 come out of YAML and data frames.
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f == int(f) and not isinstance(value, str)


DEFAULT_HEAD_DIM = 64


@dataclass(frozen=True, slots=True, init=False)
class Shape:
    """The tensor shape of one attention layer's stage.

    Parameters
    ----------
    n : int
        Tokens processed in this step: the prompt length in prefill, 1 in decode.
    d : int
        Hidden dimension (model width).
    kv_len : int, default 0
        Tokens already in the KV cache before this step. Attention attends to
        ``kv_len + n`` keys; prefill from an empty cache has ``kv_len=0``.
    batch : int, default 1
        Sequences processed together (or speculation width).
    heads : int, optional
        Attention heads; ``d`` must be divisible by it. Defaults to ``d // 64``
        (head dimension 64), or 1 head when ``d < 64``.
    precision : {"fp16", "int8"}, default "fp16"

    Examples
    --------
    >>> s = Shape(n=1, d=4096, kv_len=512, precision="int8")
    >>> s.heads, s.head_dim, s.phase
    (64, 64, 'decode')
    >>> Shape(n=0, d=64)
    Traceback (most recent call last):
    ...
    ValueError: n must be >= 1, got 0
    """

    n: int
    d: int
    kv_len: int
    batch: int
    heads: int
    precision: Precision
    #: the bucket the scheduler's decisions at this shape share (see :func:`length_bucket`):
    #: ``(n, d, heads, batch, precision, keys)`` with ``n`` and ``keys = kv_len + n`` bucketed
    bucket: tuple[int, int, int, int, Precision, int] = field(init=False, repr=False, compare=False)
    # Shapes key the scheduler's decision table: hash once, not on every lookup.
    _hash: int = field(init=False, repr=False, compare=False)

    # An explicit __init__ (not the generated one) so that type checkers accept the
    # documented ``precision="int8"`` and ``heads=None`` while the fields stay exact.
    def __init__(
        self,
        n: int,
        d: int,
        kv_len: int = 0,
        batch: int = 1,
        heads: int | None = None,
        precision: Precision | str = Precision.FP16,
    ) -> None:
        if not (
            type(n) is type(d) is type(kv_len) is type(batch) is int and n > 0 and d > 0 and kv_len >= 0 and batch > 0
        ):
            # not plain valid ints (the common case, checked at once): each is converted or named
            n = _check_int("n", n, 1)
            d = _check_int("d", d, 1)
            kv_len = _check_int("kv_len", kv_len, 0)
            batch = _check_int("batch", batch, 1)
        if heads is None:
            heads = d // DEFAULT_HEAD_DIM if d % DEFAULT_HEAD_DIM == 0 else 1  # d >= 1: at least one head
        else:
            heads = _check_int("heads", heads, 1)
        if d % heads != 0:
            raise ValueError(f"d ({d}) must be divisible by heads ({heads})")
        precision = parse_precision(precision)
        _set_n(self, n)
        _set_d(self, d)
        _set_kv_len(self, kv_len)
        _set_batch(self, batch)
        _set_heads(self, heads)
        _set_precision(self, precision)
        # Computed once here rather than on every decision: a shape is decided at least
        # twice (qkv, then attn) and, in a decode loop, once per layer of the model.
        # length_bucket(kv_len + n, 16) written out: nearly every shape needs it, and a call
        # would cost more than the rest of the bucket.
        keys = kv_len + n
        if keys > 16:
            low = keys.bit_length() - 3
            keys = keys >> low << low
        _set_bucket(self, (n if n <= 64 else length_bucket(n, 64), d, heads, batch, precision, keys))
        _set_hash(self, hash((n, d, kv_len, batch, heads, precision)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def head_dim(self) -> int:
        """Dimension of one attention head, ``d // heads``."""
        return self.d // self.heads

    @property
    def keys(self) -> int:
        """Keys each query attends to at most: ``kv_len + n``."""
        return self.kv_len + self.n

    @property
    def phase(self) -> str:
        """``"decode"`` for one new token per sequence, else ``"prefill"``."""
        return "decode" if self.n == 1 else "prefill"

    def as_dict(self) -> dict[str, Any]:
        """Plain-type fields, for logs, JSON and YAML."""
        return {
            "n": self.n,
            "d": self.d,
            "kv_len": self.kv_len,
            "batch": self.batch,
            "heads": self.heads,
            "precision": self.precision.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shape:
        """Inverse of :meth:`as_dict`; unknown keys are an error naming them."""
        unknown = set(data) - {"n", "d", "kv_len", "batch", "heads", "precision"}
        if unknown:
            raise ValueError(f"unknown shape field(s): {', '.join(sorted(unknown))}")
        return cls(**dict(data))


# Shape is frozen: its __init__ fills the slots through their descriptors, at half the cost of
# object.__setattr__ (a shape is made once per token, or per layer).
_set_n, _set_d, _set_kv_len, _set_batch, _set_heads, _set_precision, _set_bucket, _set_hash = (
    Shape.__dict__[name].__set__ for name in ("n", "d", "kv_len", "batch", "heads", "precision", "bucket", "_hash")
)


class Choice(NamedTuple):
    """What a policy hands out for one decision: a backend and why.

    ``propensity`` is the probability the policy gave ``backend`` (in (0, 1]);
    ``probabilities`` is the whole vector it drew from (so offline replay can evaluate
    any policy on the log, the logging one included); ``predicted`` maps each candidate
    to the latency (seconds) the policy expected, handoff from the previous stage
    included; ``explored`` says the backend is not the one the policy holds fastest.
    Policies publish choices once and hand the same object to many decisions; ``entry``
    is the key of the published entry it belongs to (None if none), so the policy that
    published it finds that entry again, when it learns, without working the key out.
    """

    backend: Backend
    propensity: float
    explored: bool
    predicted: Mapping[Backend, float]
    probabilities: Mapping[Backend, float]
    version: int = 0
    entry: Any = None


class Decision(NamedTuple):
    """One stage decision: which stage, at which shape, after which backend, and the policy's choice.

    >>> c = Choice(Backend.GPU, 0.99, False, {}, {Backend.GPU: 0.99, Backend.NPU: 0.01})
    >>> d = Decision(1, Stage.QKV, Shape(n=1, d=64), c)
    >>> d.backend, d.propensity, d.explored
    (<Backend.GPU: 'gpu'>, 0.99, False)
    """

    id: int
    stage: Stage
    shape: Shape
    choice: Choice
    #: the backend the previous stage of the same layer ran on
    after: Backend | None = None
    #: Unix time of the decision
    time: float = 0.0
    #: the candidate backends usable here when it was made (those the policy chose between)
    usable: tuple[Backend, ...] = ()

    @classmethod
    def of(
        cls,
        id: int,
        stage: Stage | str,
        shape: Shape,
        backend: Backend | str,
        propensity: float = 1.0,
        *,
        explored: bool = False,
        predicted: Mapping[Backend | str, float] | None = None,
        probabilities: Mapping[Backend | str, float] | None = None,
        after: Backend | str | None = None,
        policy_version: int = 0,
        time: float = 0.0,
    ) -> Decision:
        """A decision built by hand (tests, tools), every field validated.

        ``probabilities`` defaults to the whole mass on ``backend`` when ``propensity`` is 1.

        >>> Decision.of(1, "qkv", Shape(n=1, d=64), "gpu", propensity=1.5)
        Traceback (most recent call last):
        ...
        ValueError: propensity must be in (0, 1], got 1.5
        """
        if not isinstance(shape, Shape):
            raise ValueError(f"shape must be a Shape, got {shape!r}")
        b = parse_backend(backend)
        probs = probabilities if probabilities is not None else ({b: propensity} if propensity == 1.0 else {})
        choice = check_choice((b, propensity, explored, predicted or {}, probs, policy_version))
        return cls(int(id), parse_stage(stage), shape, choice, None if after is None else parse_backend(after),
                   float(time))  # fmt: skip

    @property
    def backend(self) -> Backend:
        return self.choice.backend

    @property
    def propensity(self) -> float:
        return self.choice.propensity

    @property
    def explored(self) -> bool:
        return self.choice.explored

    @property
    def predicted(self) -> Mapping[Backend, float]:
        return self.choice.predicted

    @property
    def probabilities(self) -> Mapping[Backend, float]:
        return self.choice.probabilities

    @property
    def policy_version(self) -> int:
        return self.choice.version


def check_choice(c: Any) -> Choice:
    """``c`` as a Choice with plain, valid fields, or ``ValueError`` naming the field (for hand-built choices)."""
    if not isinstance(c, tuple) or not 6 <= len(c) <= len(Choice._fields):
        raise ValueError(f"choice must be a Choice, got {c!r}")
    backend = parse_backend(c[0])
    propensity = float(c[1])
    if not 0.0 < propensity <= 1.0:
        raise ValueError(f"propensity must be in (0, 1], got {c[1]!r}")
    probs = {parse_backend(b): float(v) for b, v in dict(c[4] or {}).items()}
    if probs and (abs(sum(probs.values()) - 1.0) > 1e-6 or abs(probs.get(backend, 0.0) - propensity) > 1e-9):
        raise ValueError(f"probabilities must sum to 1 and give {backend.value} its propensity, got {probs!r}")
    return Choice(
        backend,
        propensity,
        bool(c[2]),
        MappingProxyType({parse_backend(b): float(v) for b, v in dict(c[3] or {}).items()}),
        MappingProxyType(probs or {backend: propensity}),
        int(c[5]),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """The observed result of a decision: its latency, or the error it raised."""

    decision_id: int
    latency_s: float
    ok: bool = True
    error: str | None = None
    time: float = 0.0


def check_latency(latency_s: Any, name: str = "latency_s") -> float:
    """Return ``latency_s`` as a float, or raise ``ValueError`` if it is not finite and > 0."""
    try:
        value = float(latency_s)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {latency_s!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {latency_s!r}")
    return value
