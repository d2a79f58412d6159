"""The main job: run a model's attention for a prompt and generated tokens through the scheduler.

:func:`run_workload` drives the decode workload of a config through a scheduler with
the configured policy and, beside it, through the comparison passes (by default the
static prior, the core paper's selector, and each single backend), and summarises per
stage and shape bucket which backend was chosen and what it cost.

Every pass meets the same conditions. On the simulator each has its own fresh device
with the same seed (same noise, same thermal history for the same work, the same
scripted contention). On real executors the passes take turns, token by token (A B C
A B C ...), so a load that comes or goes during the run falls on all of them alike.

On the simulator the stages run in latency-only mode; on real executors they compute
real outputs from random (read-only) weights, after a warm-up that pays every
executor's one-time costs outside the timed run. Only the configured policy's pass
is logged (to ``db``, or the config's ``store.path``); comparison passes log nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .build import build_executors
from .config import Config
from .executors import Executor
from .policies import FixedPolicy, Policy
from .scheduler import Scheduler
from .stages import make_inputs, serving_inputs
from .types import Backend, Shape, Stage
from .workload import ForwardStep, decode_steps, model_shape

log = logging.getLogger(__name__)


@dataclass
class BucketStats:
    """What happened to one stage in one shape bucket (prefill, or a range of kv lengths)."""

    stage: str
    bucket: str
    runs: int = 0
    total_s: float = 0.0
    backends: Counter[str] = field(default_factory=Counter)
    #: runs that paid one-time costs (a kernel built, a buffer grown): the scheduler did not learn from them
    cold: int = 0
    #: per backend, the runs the scheduler learned from and their summed latency
    warm_runs: Counter[str] = field(default_factory=Counter)
    warm_s: dict[str, float] = field(default_factory=dict)

    @property
    def mean_s(self) -> float:
        return self.total_s / self.runs if self.runs else math.nan

    def warm_mean_s(self, backend: str) -> float:
        """Mean latency of the warm runs on ``backend`` in this bucket (nan if it had none)."""
        n = self.warm_runs[backend]
        return self.warm_s[backend] / n if n else math.nan

    def add(self, backend: str, latency_s: float, cold: bool) -> None:
        self.runs += 1
        self.total_s += latency_s
        self.backends[backend] += 1
        if cold:
            self.cold += 1
        else:
            self.warm_runs[backend] += 1
            self.warm_s[backend] = self.warm_s.get(backend, 0.0) + latency_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "bucket": self.bucket,
            "runs": self.runs,
            "mean_ms": self.mean_s * 1e3,
            "backends": dict(self.backends),
            "cold_runs": self.cold,
            "warm_mean_ms": {b: self.warm_mean_s(b) * 1e3 for b in sorted(self.warm_runs)},
        }


@dataclass
class RunReport:
    """Totals per pass (the policy's and each comparison's) and the per-bucket breakdown of the policy's."""

    model: str
    precision: str
    layers: int
    tokens: int
    policy: str
    totals_s: dict[str, float]
    buckets: list[BucketStats]
    stats: dict[str, Any]
    #: per pass, the latency of each step (the prefill, then one per token), in seconds
    steps_s: dict[str, list[float]] = field(default_factory=dict)

    def speedup(self, baseline: str) -> float:
        """How many times faster the scheduled run was than ``baseline`` (e.g. ``"gpu-only"``)."""
        return self.totals_s[baseline] / self.totals_s[self.policy]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "layers": self.layers,
            "tokens": self.tokens,
            "policy": self.policy,
            "totals_ms": {k: v * 1e3 for k, v in self.totals_s.items()},
            "speedup": {k: self.speedup(k) for k in self.totals_s if k != self.policy},
            "steps_ms": {k: [v * 1e3 for v in steps] for k, steps in self.steps_s.items()},
            "buckets": [b.as_dict() for b in self.buckets],
            "stats": self.stats,
        }


def bucket_label(step: ForwardStep) -> str:
    """Display bucket: the prefill, or the power-of-two range of the KV length in decode."""
    if step.phase == "prefill":
        return f"prefill n={step.shape.n}"
    lo = 1 << max(0, int(math.log2(max(1, step.shape.kv_len))))
    return f"decode kv {lo}-{2 * lo - 1}"


#: name of the static prior's comparison pass (``compare`` entry ``"static"``)
STATIC = "static-prior"


def run_workload(
    config: Config,
    *,
    db: str | Path | None = None,
    policy: Policy | None = None,
    compare: Sequence[str] = ("gpu", "npu"),
    tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunReport:
    """Run the config's workload with its policy and, under the same conditions, each pass in ``compare``.

    Parameters
    ----------
    config : Config
    db : path, optional
        Log the policy's pass here (default: the config's ``store.path``, if any).
        Comparison passes are never logged.
    policy : Policy, optional
        Overrides the config's policy.
    compare : sequence of str
        ``"static"`` (the offline prior's choice, never updated; skipped when the config
        has no prior) and backend names (that backend alone); backends the config does
        not have are skipped.
    tokens : int, optional
        Overrides the workload's generated tokens.
    progress : callable, optional
        Called with ``(done, total)`` steps over every pass.
    """
    w = config.workload
    model = model_shape(w.model)
    layers = w.layers or model.layers
    n_tokens = w.tokens if tokens is None else tokens
    steps = list(decode_steps(model, prompt=w.prompt, tokens=n_tokens, precision=w.precision, batch=w.batch))
    policy_name = config.policy.kind if policy is None else policy.name

    # Comparison passes log nowhere: not to the config's store.path, nor to db.
    quiet = dataclasses.replace(config, store=dataclasses.replace(config.store, path=None))
    comparisons: list[tuple[str, Config, Policy | None]] = []
    for name in compare:
        if name == "static":
            if config.priors in ("none", ""):
                log.info("no static-prior pass: the config has no offline prior (priors: none)")
            elif policy_name != "static":
                kind = dataclasses.replace(quiet.policy, kind="static", params=None)
                comparisons.append((STATIC, dataclasses.replace(quiet, policy=kind), None))
            continue
        backend = Backend(name)
        if backend in config.backends:
            comparisons.append((f"{name}-only", quiet, FixedPolicy(backend)))

    buckets: dict[tuple[str, str], BucketStats] = {}
    passes: list[_Pass] = []
    try:
        passes.append(_Pass.build(policy_name, config, policy, buckets, db=db))
        for name, cfg, fixed in comparisons:
            passes.append(_Pass.build(name, cfg, fixed, None))
        real = passes[0].device is None
        if real:
            shared = _LayerInputs(steps[0].shape, layers)
            for p in passes:
                p.inputs = shared.fresh()
                _warm_up(p.sched, steps, p.inputs)
        total = len(steps) * len(passes)
        done = 0
        if real:
            # Interleaved, token by token: what the host does meanwhile falls on every pass alike.
            for step in steps:
                for p in passes:
                    p.step(step, layers, w.idle_between_tokens_s)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        else:
            # Each pass has its own identical simulated device: one after the other is the same.
            for p in passes:
                for step in steps:
                    p.step(step, layers, w.idle_between_tokens_s)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        passes[0].sched.flush()
        stats = passes[0].sched.stats()
    finally:
        for p in passes:
            p.sched.close()
    return RunReport(
        model=model.name,
        precision=Shape(n=1, d=64, precision=w.precision).precision.value,
        layers=layers,
        tokens=n_tokens,
        policy=policy_name,
        totals_s={p.name: p.total_s for p in passes},
        buckets=sorted(buckets.values(), key=lambda b: (b.bucket.startswith("decode"), _bucket_order(b), b.stage)),
        stats=stats,
        steps_s={p.name: p.steps_s for p in passes},
    )


class _Pass:
    """One scheduler driven through the workload, a step at a time; on a simulated device of its own
    (``device``, which idles between tokens) or on the real executors (``device`` None)."""

    def __init__(self, name: str, sched: Scheduler, buckets: dict[tuple[str, str], BucketStats] | None,
                 device: Any = None) -> None:  # fmt: skip
        self.name, self.sched, self.buckets, self.device = name, sched, buckets, device
        self.inputs: _LayerInputs | None = None
        self.total_s = 0.0
        self.steps_s: list[float] = []

    @classmethod
    def build(cls, name: str, config: Config, policy: Policy | None,
              buckets: dict[tuple[str, str], BucketStats] | None, db: str | Path | None = None) -> _Pass:  # fmt: skip
        built = build_executors(config)
        executors: dict[Backend | str, Executor] = {b: ex for b, ex in built.executors.items()}
        try:
            sched = Scheduler(config, db=db, policy=policy, executors=executors)
        except BaseException:
            for executor in built.executors.values():
                executor.close()
            raise
        return cls(name, sched, buckets, built.sim_device)

    def step(self, step: ForwardStep, layers: int, idle_s: float) -> None:
        """Run ``step`` over every layer."""
        sched, buckets, layer_inputs = self.sched, self.buckets, self.inputs
        label = bucket_label(step)
        spent = 0.0
        for layer in range(layers):
            inputs = layer_inputs.for_step(layer, step.shape) if layer_inputs else None
            run = sched.run_attention(step.shape, inputs)
            if layer_inputs is not None:
                layer_inputs.keep(layer, run.k_cache, run.v_cache)
            spent += run.latency_s
            if buckets is not None:
                for stage_run in (run.qkv, run.attn):
                    key = (stage_run.decision.stage.value, label)
                    b = buckets.get(key)
                    if b is None:
                        b = buckets[key] = BucketStats(*key)
                    b.add(stage_run.backend.value, stage_run.latency_s, stage_run.result.cold)
        if idle_s and self.device is not None:
            self.device.idle(idle_s)
        self.total_s += spent
        self.steps_s.append(spent)


def _bucket_order(b: BucketStats) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in b.bucket).split()
    return int(digits[0]) if digits else 0


def _warm_up(sched: Scheduler, steps: Sequence[ForwardStep], layer_inputs: _LayerInputs) -> None:
    """Pay the one-time costs of every executor before anything is timed, as a server does at start.

    Each stage runs once per layer on every available backend, at the prefill shape and at
    the first decode shape: kernels are built, weights uploaded or converted, buffers sized.
    These runs go to the executors directly: they are not decisions, the scheduler does not
    learn from them, and the totals do not count them. Without them the first run of a
    backend in each bucket is cold, so the scheduler learns nothing from it, and each total
    would hold a different share of one-time costs.
    """
    shapes = [s.shape for s in steps[:2]]
    start = time.perf_counter()
    for backend, executor in sched.executors.items():
        if backend not in sched.config.candidates or not executor.is_available():
            continue
        for shape in shapes:
            attn_inputs = make_inputs(Stage.ATTN, shape)
            for stage in (Stage.QKV, Stage.ATTN):
                if not executor.supports(stage, shape):
                    continue
                try:
                    if stage is Stage.QKV:
                        for layer in range(layer_inputs.layers):
                            executor.run(stage, shape, layer_inputs.qkv_inputs(layer, shape))
                    else:
                        executor.run(stage, shape, attn_inputs)
                except Exception as exc:  # the scheduled run will meet it again and handle it
                    log.warning("warm-up of %s on %s at %s failed: %s", stage.value, backend.value, shape, exc)
    log.info("warm-up took %.3f s", time.perf_counter() - start)


class _LayerInputs:
    """Random weights per layer and growing KV caches, for executors that compute real outputs."""

    def __init__(self, shape: Shape, layers: int, weights: list[dict[str, np.ndarray]] | None = None) -> None:
        # Read-only, as a model's weights are: executors keep their device copies of them.
        self._weights = weights if weights is not None else [
            serving_inputs(Stage.QKV, dataclasses.replace(shape, n=1, kv_len=0), seed=layer) for layer in range(layers)
        ]  # fmt: skip
        self._shape = shape
        self._caches: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self._weights)
        self._rng = np.random.default_rng(0)

    def fresh(self) -> _LayerInputs:
        """Inputs for another pass: the same weights (and activations), empty KV caches."""
        return _LayerInputs(self._shape, len(self._weights), self._weights)

    @property
    def layers(self) -> int:
        return len(self._weights)

    def qkv_inputs(self, layer: int, shape: Shape) -> dict[str, np.ndarray]:
        """Inputs of ``qkv`` at ``shape`` with the layer's weights (the activations are zeros)."""
        w = self._weights[layer]
        return {"x": np.zeros((shape.batch, shape.n, shape.d), np.float32), "w": w["w"], "b": w["b"]}

    def for_step(self, layer: int, shape: Shape) -> dict[str, np.ndarray]:
        w = self._weights[layer]
        x = self._rng.standard_normal((shape.batch, shape.n, shape.d)).astype(np.float32)
        inputs = {"x": x, "w": w["w"], "b": w["b"]}
        cache = self._caches[layer]
        if shape.kv_len:
            if cache is None or cache[0].shape[2] != shape.kv_len:
                raise RuntimeError(f"layer {layer}: KV cache holds {0 if cache is None else cache[0].shape[2]} "
                                   f"tokens, the step expects {shape.kv_len}")  # fmt: skip
            inputs["k_cache"], inputs["v_cache"] = cache
        return inputs

    def keep(self, layer: int, k: np.ndarray | None, v: np.ndarray | None) -> None:
        if k is not None and v is not None:
            self._caches[layer] = (k, v)


__all__ = ["STATIC", "BucketStats", "RunReport", "bucket_label", "run_workload"]
