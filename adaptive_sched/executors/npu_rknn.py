"""The NPU backend: prebuilt RKNN models run through rknn-toolkit-lite2 (``RKNNLite``) on an RK3588.

The NPU runs static graphs only, so this executor does not compile anything: it runs
``.rknn`` models converted ahead of time (``scripts/build_rknn_models.py``, see
``docs/rknn.md``) and listed in ``model_dir/manifest.json`` (see
:mod:`adaptive_sched.executors.rknn_models`). A shape without a model is unsupported,
and the reason says how to build one.

Buckets: a shape runs on its exact model if the manifest has one, else on the smallest
*bucket model* that holds it (``rknn_models``: the fewest query rows, then the fewest
keys): attention at any ``kv_len`` up to the largest bucket runs with the K/V cache padded
and the padding masked out of the softmax, and prefill at any ``n`` up to the largest
``n`` bucket with padded query rows, whose outputs are dropped. ``kv_buckets`` and
``n_buckets`` name the buckets a deployment uses (the models outside them are ignored,
and a named bucket whose model is missing is reported as such).

What a run does
---------------
1. ``prepare`` loads the shape's model and initialises the runtime with the configured
   core mask, once; runtimes stay cached (least recently used ones are released past
   ``max_loaded_models``).
2. For a model with baked weights, the caller's ``w`` and ``b`` are checked against the
   manifest's digests (see ``weight_check``); other weights are an :class:`ExecutorError`.
3. Inputs are reshaped and cast to the model's layout, ``RKNNLite.inference`` runs, and
   the output is reshaped to the reference layout (a bias the model does not add itself
   is added on the host).

Timing: ``RunResult.latency_s`` is the wall time (``perf_counter``) of step 3, the part a
deployment pays on every call; the digest check of step 2 is reported apart in
``details["weight_check_s"]``. RKNNLite exposes no device timer, so ``device_s`` is None.

``rknnlite`` is imported only when the executor is probed, and only if no ``runtime``
class was injected.
"""

from __future__ import annotations

import logging
import math
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import ConfigError, ExecutorError, ExecutorUnavailable
from ..features import kv_bucket, pad_kv_fraction
from ..stages import output_shape
from ..types import Backend, Precision, Shape, Stage
from .base import Executor, RunResult, WeightCache, read_only
from .rknn_feed import model_feed, take_output
from .rknn_models import (
    Manifest,
    ModelEntry,
    ModelKey,
    group_key,
    model_key,
    parse_buckets,
    read_manifest,
    weights_digest,
)

logger = logging.getLogger(__name__)

#: core_mask option -> RKNNLite constant (RK3588 has cores 0, 1 and 2)
CORE_MASKS = {
    "auto": "NPU_CORE_AUTO",
    "0": "NPU_CORE_0",
    "1": "NPU_CORE_1",
    "2": "NPU_CORE_2",
    "0_1": "NPU_CORE_0_1",
    "0_1_2": "NPU_CORE_0_1_2",
    "all": "NPU_CORE_ALL",
}
WEIGHT_CHECKS = ("readonly", "identity", "always")

#: the RKNN matmul limit on the reduction dimension (RK3588)
MAX_K = 10240
#: alignment of the matmul operands on RK3588, in elements: (K, N) per precision
ALIGN = {Precision.FP16: (16, 16), Precision.INT8: (32, 32)}


def parse_core_mask(value: Any) -> str:
    """Normalise a ``core_mask`` option to a key of :data:`CORE_MASKS`.

    Accepts the names (``"auto"``, ``"0_1_2"``, ...) or a list of core numbers. A bare number
    is refused: YAML reads an unquoted ``0_1`` as 1 and ``0_1_2`` as 10, so ``1`` may not mean core 1.

    >>> parse_core_mask([0, 1, 2]), parse_core_mask("1"), parse_core_mask("AUTO")
    ('0_1_2', '1', 'auto')
    """
    if isinstance(value, (bool, int)):
        raise ConfigError(f"core_mask: got the number {value!r}; write the mask as a quoted string (\"1\", "
                          f"\"0_1\", \"0_1_2\"): unquoted, YAML reads 0_1 as 1 and 0_1_2 as 10")  # fmt: skip
    if isinstance(value, (list, tuple)):
        text = "_".join(str(v) for v in sorted(set(value)))
    else:
        text = str(value).strip().lower()
    if text not in CORE_MASKS:
        raise ConfigError(f"core_mask: unknown value {value!r} (expected one of {', '.join(CORE_MASKS)})")
    return text


def matmuls(stage: Stage, shape: Shape) -> list[tuple[str, int, int]]:
    """The matmuls of a stage as ``(what, K, N)``: reduction and output-column sizes."""
    if stage is Stage.QKV:
        return [("x @ w", shape.d, 3 * shape.d)]
    return [("q @ k^T", shape.head_dim, shape.keys), ("p @ v", shape.keys, shape.head_dim)]


@dataclass
class _Loaded:
    """One initialised RKNNLite runtime and the model it runs."""

    entry: ModelEntry
    rknn: Any
    runs: int = 0


class RknnExecutor(Executor):
    """Runs ``qkv`` and ``attn`` as prebuilt RKNN models on the RK3588 NPU.

    Creating the executor touches nothing; :meth:`is_available` imports ``rknnlite``,
    reads the manifest and initialises one model's runtime, and never raises.

    Parameters
    ----------
    backend : str, default "npu"
        The backend name this executor answers for.
    model_dir : str or Path
        Directory with ``manifest.json`` and the ``.rknn`` files it lists.
    core_mask : str, int or list, default "auto"
        NPU cores each model runs on: ``"auto"`` (the driver picks an idle core), ``"0"``,
        ``"1"``, ``"2"``, ``"0_1"``, ``"0_1_2"`` (one model split over the three cores) or
        ``"all"``; or a list of core numbers. Quote masks in YAML (a bare number is refused).
    runtime : type, optional
        The ``RKNNLite`` class to use instead of ``rknnlite.api.RKNNLite`` (tests inject a fake).
    weight_check : {"readonly", "identity", "always"}, default "readonly"
        When the digest of the weights passed to a baked-weights model is computed again:
        ``"readonly"`` hashes a read-only array once (``w.setflags(write=False)``) and any
        other array on every call; ``"identity"`` trusts an array object it has checked
        before (the caller promises not to modify it in place); ``"always"`` hashes on every call.
    max_loaded_models : int, default 16
        Runtimes kept initialised at once; the least recently used is released past it.
    require_aligned : bool, default False
        Also report shapes whose matmuls miss the RK3588 alignment (K to 32 bytes, N to 16
        fp16 / 32 int8 elements) as unsupported. Off by default: the converter pads such
        models, so they run, only slower.
    verbose : bool, default False
        Passed to ``RKNNLite(verbose=...)``.
    kv_buckets : list of int or {"pow2": [lo, hi]}, optional
        The key lengths (``kv_len + n``) of the bucket attention models to use, e.g.
        ``{"pow2": [128, 2048]}``; default: every bucket model in the manifest.
    n_buckets : list of int or {"pow2": [lo, hi]}, optional
        The query rows of the prefill bucket models (``qkv``, and ``attn`` from an empty
        cache, whose keys equal its rows) to use; default: every one in the manifest.

    Examples
    --------
    >>> ex = RknnExecutor(model_dir="/var/lib/adaptive-sched/rknn", core_mask="0_1_2")  # doctest: +SKIP
    >>> ex.is_available(), ex.unavailable_reason                                      # doctest: +SKIP
    (True, '')
    >>> ex.run("qkv", Shape(n=1, d=2048, precision="int8")).latency_s                 # doctest: +SKIP
    0.00081
    """

    kind = "npu_rknn"

    OPTIONS = MappingProxyType({
        "model_dir": "directory of the prepared .rknn models",
        "core_mask": "NPU cores to run on: auto, 0, 1, 2, 0_1 or 0_1_2",
        "runtime": "the RKNNLite class (tests and embedding)",
        "weight_check": "how weights are matched with a loaded model",
        "max_loaded_models": "models kept loaded",
        "require_aligned": "refuse shapes that need padding",
        "verbose": "the runtime's own logging",
        "kv_buckets": "KV lengths models are built for",
        "n_buckets": "sequence lengths models are built for",
    })  # fmt: skip
    INTERNAL_OPTIONS = frozenset({"runtime"})

    def __init__(
        self,
        backend: Backend | str = Backend.NPU,
        model_dir: str | Path | None = None,
        core_mask: Any = "auto",
        runtime: type | None = None,
        weight_check: str = "readonly",
        max_loaded_models: int = 16,
        require_aligned: bool = False,
        verbose: bool = False,
        kv_buckets: Any = None,
        n_buckets: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(backend, **options)
        self.kv_buckets = parse_buckets(kv_buckets, "kv_buckets")
        self.n_buckets = parse_buckets(n_buckets, "n_buckets")
        self.model_dir = None if model_dir is None or str(model_dir) == "" else Path(model_dir).expanduser()
        self.core_mask = parse_core_mask(core_mask)
        self.runtime = runtime
        if str(weight_check).lower() not in WEIGHT_CHECKS:
            raise ConfigError(f"weight_check: unknown value {weight_check!r} (expected one of "
                              f"{', '.join(map(repr, WEIGHT_CHECKS))})")  # fmt: skip
        self.weight_check = str(weight_check).lower()
        if isinstance(max_loaded_models, bool) or not isinstance(max_loaded_models, int) or max_loaded_models < 1:
            raise ConfigError(f"max_loaded_models must be an integer >= 1, got {max_loaded_models!r}")
        self.max_loaded_models = max_loaded_models
        self.require_aligned = bool(require_aligned)
        self.verbose = bool(verbose)

        self._lock = threading.RLock()
        self._cls: Any = None
        self._manifest: Manifest | None = None
        self._models: dict[ModelKey, ModelEntry] = {}
        self._buckets: dict[ModelKey, list[ModelEntry]] = {}  # group_key -> bucket models, fewest rows first
        self._missing: dict[ModelKey, str] = {}  # entries whose .rknn file is absent
        self._loaded: OrderedDict[ModelKey, _Loaded] = OrderedDict()
        # arrays whose digest was checked, by identity: (array, digest) -> True
        self._checked: WeightCache[bool] = WeightCache(4 * self.max_loaded_models)
        self._counters = {"loads": 0, "releases": 0, "inferences": 0, "weight_hashes": 0}

    # -- availability ---------------------------------------------------------
    def _runtime_class(self) -> tuple[Any, str | None]:
        if self.runtime is not None:
            return self.runtime, None
        try:
            from rknnlite.api import RKNNLite
        except Exception as exc:  # ImportError, or OSError from a missing librknnrt.so
            machine = platform.machine() or "unknown"
            if machine.lower() not in ("aarch64", "arm64"):
                return None, (f"rknn-toolkit-lite2 is only published for aarch64 boards, and this host is {machine} "
                              f"(import rknnlite: {exc})")  # fmt: skip
            return None, (f"cannot import rknnlite ({exc}); install rknn-toolkit-lite2 "
                          "(pip install 'adaptive-sched[rknn]') and Rockchip's librknnrt.so")  # fmt: skip
        return RKNNLite, None

    def _probe(self) -> str | None:
        with self._lock:  # two threads probing at once would load the first model twice
            return self._probe_locked()

    def _probe_locked(self) -> str | None:
        cls, reason = self._runtime_class()
        if reason is not None:
            return reason
        if self.model_dir is None:
            return "no model_dir: the NPU runs prebuilt .rknn models listed in a manifest.json (see docs/rknn.md)"
        if not self.model_dir.is_dir():
            return f"model_dir {self.model_dir} does not exist or is not a directory"
        try:
            manifest = read_manifest(self.model_dir)
        except ConfigError as exc:
            if not (self.model_dir / "manifest.json").exists():
                found = len(list(self.model_dir.glob("*.rknn")))
                return (
                    f"model_dir {self.model_dir} has no manifest.json ({found} .rknn file(s)); write one with "
                    "adaptive_sched.executors.rknn_models.write_manifest or scripts/build_rknn_models.py"
                )
            return str(exc)
        models, missing = {}, {}
        buckets: dict[ModelKey, list[ModelEntry]] = {}
        for entry in manifest.entries:
            if entry.bucket and not self._configured(entry):
                logger.info("RKNN model %s: bucket %s is not in kv_buckets/n_buckets; not used", entry.file,
                            entry.describe())  # fmt: skip
                continue
            if manifest.path(entry).is_file():
                models[entry.key] = entry
                if entry.bucket:
                    buckets.setdefault(group_key(entry.stage, entry.shape), []).append(entry)
            else:
                missing[entry.key] = f"the manifest lists {entry.file} but {manifest.path(entry)} does not exist"
                logger.warning("RKNN model %s for %s is missing", manifest.path(entry), entry.describe())
        if not models:
            return f"{manifest.directory / 'manifest.json'} lists no model whose .rknn file exists"
        for group in buckets.values():
            group.sort(key=lambda e: (e.shape.n, e.shape.keys))
        self._cls, self._manifest, self._models, self._missing = cls, manifest, models, missing
        self._buckets = buckets
        # Proving the runtime works on one model catches a missing driver or library now, not at first run.
        first = min(models.values(), key=lambda e: manifest.path(e).stat().st_size)
        try:
            self._load(first)
        except ExecutorError as exc:
            self._manifest, self._models, self._missing, self._buckets = None, {}, {}, {}
            return str(exc)
        logger.info("RKNN executor: %d model(s) in %s, core mask %s", len(models), manifest.directory, self.core_mask)
        return None

    def _require(self) -> Manifest:
        if not self.is_available() or self._manifest is None:
            raise ExecutorUnavailable(f"{self.kind} is not available: {self.unavailable_reason}")
        return self._manifest

    # -- introspection --------------------------------------------------------
    @property
    def manifest(self) -> Manifest | None:
        """The manifest in use (None until a successful probe)."""
        self.is_available()
        return self._manifest

    def loaded_models(self) -> list[str]:
        """Files of the models whose runtimes are initialised, least recently used first."""
        with self._lock:
            return [loaded.entry.file for loaded in self._loaded.values()]

    def cache_info(self) -> dict[str, int]:
        """Counters of loads, releases, inferences and weight hashes (for tests and diagnostics)."""
        with self._lock:
            return dict(self._counters, loaded=len(self._loaded), models=len(self._models))

    def entry_for(self, stage: Stage | str, shape: Shape) -> ModelEntry | None:
        """The model that runs ``stage`` at ``shape``: its exact model, else the smallest bucket that holds it."""
        self.is_available()
        exact = self._models.get(model_key(stage, shape))
        if exact is not None:
            return exact
        for entry in self._buckets.get(group_key(stage, shape), ()):
            if entry.holds(stage, shape):
                return entry
        return None

    def _configured(self, entry: ModelEntry) -> bool:
        """Whether a bucket model is one of the configured buckets (any, when none are configured)."""
        big = entry.shape
        kv_ok = self.kv_buckets is None or big.keys in self.kv_buckets
        n_ok = self.n_buckets is None or big.n in self.n_buckets
        if entry.stage is Stage.QKV or big.kv_len == 0:  # prefill rows (from an empty cache: keys = rows)
            return n_ok
        return kv_ok if big.n == 1 else kv_ok and n_ok  # decode, or a chunk of prefill after a cache

    def buckets(self) -> dict[str, Any]:
        """The buckets in use: configured sizes (None: from the manifest) and the bucket models found.

        ``{"kv_buckets": [...] | None, "n_buckets": [...] | None, "models": {"attn": [[n, keys], ...],
        "qkv": [[n], ...]}}``, each model listed once per size.
        """
        self.is_available()
        found: dict[str, set[tuple[int, ...]]] = {"attn": set(), "qkv": set()}
        for group in self._buckets.values():
            for e in group:
                found[e.stage.value].add((e.shape.n, e.shape.keys) if e.stage is Stage.ATTN else (e.shape.n,))
        return {
            "kv_buckets": None if self.kv_buckets is None else list(self.kv_buckets),
            "n_buckets": None if self.n_buckets is None else list(self.n_buckets),
            "models": {stage: [list(t) for t in sorted(v)] for stage, v in found.items()},
        }

    @property
    def bucket_summary(self) -> str:
        """One line for ``adaptive-sched executors``: the kv and n buckets and how many have models."""
        info = self.buckets()
        if not self.is_available():  # no manifest was read: only the configuration is known
            named = [(label, b) for label, b in (("kv", self.kv_buckets), ("n", self.n_buckets)) if b is not None]
            return "; ".join(f"{label} {_sizes(b)} (configured)" for label, b in named)
        decode = sorted({keys for n, keys in info["models"]["attn"] if n == 1})
        rows = sorted({n for (n, *_) in info["models"]["attn"] + info["models"]["qkv"] if n > 1})
        parts = []
        for label, configured, built in (("kv", info["kv_buckets"], decode), ("n", info["n_buckets"], rows)):
            if configured is not None:
                have = sum(1 for b in configured if b in built)
                parts.append(f"{label} {_sizes(configured)} ({have}/{len(configured)} built)")
            elif built:
                parts.append(f"{label} {_sizes(built)}")
        return "; ".join(parts) or "none (exact shapes only)"

    # -- support --------------------------------------------------------------
    def _supports(self, stage: Stage, shape: Shape) -> str | None:
        for what, k, n in matmuls(stage, shape):
            if k > MAX_K:
                return f"{what} reduces over K={k}, more than the RKNN matmul limit of {MAX_K}"
            if self.require_aligned:
                k_align, n_align = ALIGN[shape.precision]
                if k % k_align or n % n_align:
                    return (f"{what} has K={k}, N={n}; RK3588 needs K a multiple of {k_align} and N of {n_align} "
                            f"for {shape.precision.value} (require_aligned is on)")  # fmt: skip
        if not self.is_available():
            return f"{self.kind} is not available here: {self.unavailable_reason}"
        if self.entry_for(stage, shape) is not None:
            return None
        key = model_key(stage, shape)
        if key in self._missing:
            return self._missing[key]
        bucket = self._missing_bucket(stage, shape)
        if bucket:
            return bucket
        return (
            f"no prepared RKNN model for {stage.value} at {shape} in {self.model_dir}; build one with "
            f"scripts/build_rknn_models.py --stage {stage.value} {_shape_args(stage, shape)} (see docs/rknn.md)"
        )

    def _missing_bucket(self, stage: Stage, shape: Shape) -> str | None:
        """Why a configured bucket does not serve ``shape`` (too long, or its model is not built), if one should."""
        if stage is Stage.ATTN and shape.n == 1 and self.kv_buckets is not None:
            bucket = kv_bucket(shape.keys, self.kv_buckets)
            if bucket is None:
                return (f"{shape.keys} keys exceed the largest kv bucket ({max(self.kv_buckets)}); "
                        f"kv_buckets are {_sizes(self.kv_buckets)}")  # fmt: skip
            return (f"kv bucket {bucket} is configured but {self.model_dir} has no bucket model for attn at "
                    f"n=1, keys<={bucket}, d={shape.d}, heads={shape.heads}, batch={shape.batch}, "
                    f"{shape.precision.value}; build it with scripts/build_rknn_models.py --stage attn --n 1 "
                    f"--d {shape.d} --heads {shape.heads} --batch {shape.batch} --precision {shape.precision.value} "
                    f"--kv-buckets {bucket}")  # fmt: skip
        if shape.n > 1 and self.n_buckets is not None and (stage is Stage.QKV or shape.kv_len == 0):
            bucket = kv_bucket(shape.n, self.n_buckets)
            if bucket is None:
                return f"n={shape.n} exceeds the largest n bucket ({max(self.n_buckets)})"
            return (f"n bucket {bucket} is configured but {self.model_dir} has no bucket model for {stage.value} at "
                    f"n<={bucket}, d={shape.d}; build it with scripts/build_rknn_models.py --stage {stage.value} "
                    f"--d {shape.d} --precision {shape.precision.value} --n-buckets {bucket}")  # fmt: skip
        return None

    # -- runtimes ---------------------------------------------------------------
    def _load(self, entry: ModelEntry) -> _Loaded:
        """Load ``entry``'s model and initialise its runtime (cached); ExecutorError on an RKNN failure."""
        with self._lock:
            loaded = self._loaded.get(entry.key)
            if loaded is not None:
                self._loaded.move_to_end(entry.key)
                return loaded
            assert self._manifest is not None
            path = self._manifest.path(entry)
            try:
                rknn = self._cls(verbose=self.verbose)
            except Exception as exc:
                raise ExecutorError(f"{self.kind}: creating RKNNLite failed: {exc}") from exc
            mask_name = CORE_MASKS[self.core_mask]
            try:
                ret = rknn.load_rknn(str(path))
                if ret != 0:
                    raise ExecutorError(f"{self.kind}: load_rknn({path}) failed with RKNN return code {ret}")
                mask = getattr(self._cls, mask_name)
                ret = rknn.init_runtime(core_mask=mask)
                if ret != 0:
                    raise ExecutorError(
                        f"{self.kind}: init_runtime(core_mask={mask_name}) failed with RKNN return code {ret} "
                        f"for {path} (is this an RK3588 with the rknpu driver and librknnrt.so, and was the "
                        "model converted for target_platform='rk3588'?)"
                    )
            except ExecutorError:
                self._release(rknn, path)
                raise
            except Exception as exc:
                self._release(rknn, path)
                raise ExecutorError(f"{self.kind}: loading {path} failed: {type(exc).__name__}: {exc}") from exc
            loaded = self._loaded[entry.key] = _Loaded(entry, rknn)
            self._counters["loads"] += 1
            logger.debug("RKNN model %s ready on %s", path, mask_name)
            while len(self._loaded) > self.max_loaded_models:
                _, old = self._loaded.popitem(last=False)
                self._release(old.rknn, self._manifest.path(old.entry))
            return loaded

    def _release(self, rknn: Any, path: Path) -> None:
        try:
            rknn.release()
        except Exception as exc:  # releasing must never take the caller down
            logger.warning("RKNN release of %s failed: %s", path, exc)
        self._counters["releases"] += 1

    def _entry(self, stage: Stage, shape: Shape) -> ModelEntry:
        entry = self.entry_for(stage, shape)
        assert entry is not None  # supports() said so
        return entry

    def _prepare(self, stage: Stage, shape: Shape) -> None:
        self._require()
        self._load(self._entry(stage, shape))

    # -- weights ----------------------------------------------------------------
    def _check_weights(self, entry: ModelEntry, inputs: Mapping[str, np.ndarray]) -> None:
        """Refuse weights other than the ones baked into ``entry``'s model."""
        for name, want in (("w", entry.w_digest), ("b", entry.b_digest)):
            a = inputs.get(name)
            if want is None:
                continue  # a model without a baked bias: the caller's bias, if any, is added on the host
            if a is None:
                raise ExecutorError(f"{self.kind}: the model {entry.file} adds a baked bias but the caller passed "
                                    "none; convert a model without one (see docs/rknn.md)")  # fmt: skip
            if self._weights_known(a, want):
                continue
            got = weights_digest(a, entry.shape.precision)
            self._counters["weight_hashes"] += 1
            if got != want:
                raise ExecutorError(
                    f"{self.kind}: input {name!r} is not the weight baked into {entry.file} (digest {got[:19]}..., "
                    f"the manifest says {want[:19]}...); convert a model for these weights, or use one that takes "
                    "them as inputs"
                )
            if self.weight_check == "identity" or (self.weight_check == "readonly" and read_only(a)):
                self._checked.put(a, want, True)

    def _weights_known(self, a: np.ndarray, want: str) -> bool:
        if self.weight_check == "always":
            return False
        if self._checked.get(a, want) is None:
            return False
        return self.weight_check == "identity" or read_only(a)

    # -- running --------------------------------------------------------------
    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        assert inputs is not None
        self._require()
        entry = self._entry(stage, shape)
        with self._lock:
            loaded = self._load(entry)
            check_s = 0.0
            if entry.weights == "baked":
                start = time.perf_counter()
                self._check_weights(entry, inputs)
                check_s = time.perf_counter() - start
            start = time.perf_counter()
            feed = model_feed(entry, shape, inputs)
            kwargs = {} if entry.data_format is None else {"data_format": entry.data_format}
            t0 = time.perf_counter()
            try:
                outputs = loaded.rknn.inference(inputs=feed, **kwargs)
            except Exception as exc:
                raise ExecutorError(
                    f"{self.kind}: inference on {entry.file} raised {type(exc).__name__}: {exc}"
                ) from exc
            inference_s = time.perf_counter() - t0
            self._counters["inferences"] += 1
            output = self._output(entry, stage, shape, outputs, inputs)
            latency = time.perf_counter() - start
            # the first inference of a fresh runtime allocates its input and output buffers
            cold = loaded.runs == 0
            loaded.runs += 1
        details: dict[str, Any] = {"model": entry.file, "core_mask": self.core_mask, "inference_s": inference_s,
                                   "weight_check_s": check_s}  # fmt: skip
        if entry.bucket:
            big = entry.shape
            details["bucket"] = {"n": big.n, "keys": big.keys} if stage is Stage.ATTN else {"n": big.n}
            details["pad_n"] = (big.n - shape.n) / big.n
            if stage is Stage.ATTN:
                details["pad_kv"] = pad_kv_fraction(shape.keys, (big.keys,))
        return RunResult(output=output, latency_s=max(latency, 1e-9), details=details, cold=cold)

    def _output(
        self, entry: ModelEntry, stage: Stage, shape: Shape, outputs: Any, inputs: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        if outputs is None:
            # RKNNLite reports every failure inside inference() as None (the cause goes to its log)
            raise ExecutorError(f"{self.kind}: inference on {entry.file} returned None (RKNN failure; "
                                "rknnlite's log has the cause)")  # fmt: skip
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise ExecutorError(f"{self.kind}: inference on {entry.file} returned {type(outputs).__name__} "
                                "instead of a list of outputs")  # fmt: skip
        out = np.asarray(outputs[0])
        full = output_shape(stage, entry.shape)
        if out.size != math.prod(full):
            raise ExecutorError(f"{self.kind}: {entry.file} returned an output of shape {out.shape}; "
                                f"{stage.value} at {entry.shape} needs {math.prod(full)} elements {full}")  # fmt: skip
        result = take_output(entry, shape, out)
        bias = inputs.get("b") if stage is Stage.QKV else None
        if bias is not None and not entry.adds_bias:
            result = result + np.asarray(bias, dtype=np.float32)
        return result

    # -- teardown ---------------------------------------------------------------
    def _close(self) -> None:
        with self._lock:
            while self._loaded:
                _, loaded = self._loaded.popitem(last=False)
                path = self._manifest.path(loaded.entry) if self._manifest is not None else Path(loaded.entry.file)
                self._release(loaded.rknn, path)
            self._checked.clear()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={self.backend.value!r}, model_dir={self.model_dir!r}, "
            f"core_mask={self.core_mask!r})"
        )


def _sizes(sizes: Any) -> str:
    return ",".join(str(s) for s in sizes)


def _shape_args(stage: Stage, shape: Shape) -> str:
    args = f"--n {shape.n} --d {shape.d} --batch {shape.batch} --precision {shape.precision.value}"
    if stage is Stage.ATTN:
        args += f" --kv-len {shape.kv_len} --heads {shape.heads}"
    return args
