"""A simulated heterogeneous SoC: modelled stage latencies on a virtual clock.

No RK3588 is attached to our machines, so the embedded default configuration runs
on this model. A :class:`DeviceProfile` (a YAML file under ``configs/devices``)
holds every constant; :class:`SimulatedDevice` turns a stage, a shape and a
backend into a latency and keeps the device state that drifts at run time.

The cost of one stage run on one backend (at the nominal clock) is::

    latency = fixed + max(compute * f_nominal / f_now, memory)     # roofline
    fixed   = calls * launch_s + layout conversion + page-stride penalty   # not clock-bound
    compute = sum over the stage's GEMMs of padded FLOPs / (peak * efficiency * shape factors)
              + element_s * input elements                         # per-call input conversion
    memory  = bytes moved / (bandwidth * occupancy)                # clock-bound if the profile says so

then multiplied by the backend's contention and scripted slowdowns, plus the
transition cost when the stage consumes an output produced on another backend
(a synchronisation plus the activations moved through shared DRAM), times
log-normal noise ``exp(sigma * z)`` (so the noise-free latency is the median).

Effects a profile may switch on for any backend, each bounded (the profile says by what):

* ``align``: matmul dims padded to the hardware's alignment (the padded work is what costs);
* ``shape_half``: shape sensitivity, each GEMM dim ``x`` scales efficiency by ``x / (x + half)``;
* ``occupancy_half``: small-tensor inefficiency, a stage with ``w`` outputs reaches ``w / (w + half)``
  of the compute rate and of the bandwidth (for attention, of the bandwidth on K and V);
* ``row_align``: GEMMs of more rows than one tile and fewer than two take a slow path; from two
  tiles on, the last tile computes padding rows;
* ``page_stride``: decode attention reading a token-major KV cache head by head touches one
  memory page per key once the row stride reaches a page; past the TLB's reach a share of
  the accesses miss, and the penalty grows with that share up to ``penalty_s`` per call;
* ``layout_Bps``: activations converted to and from the accelerator's native layout on the CPU;
* ``kv_buckets``: static-graph attention, run on the smallest prepared KV length holding
  ``kv_len + n`` keys (it costs what that length costs); past the largest it is unsupported.

Physical bounds: :func:`roofline_s` is a stage's floor (bytes over the backend's bandwidth,
FLOPs over its peak); a backend's ``bound`` in the profile documents the envelope every
stage latency stays in (:func:`latency_bound`), checked over the whole shape grid by the
tests. End to end, :func:`anchor_table` prices whole-model decode tokens from the same
constants and compares them with the public figures the profile lists under ``anchors``.

Drift, all in virtual time: per-backend temperature (heats while busy towards a
clock-dependent steady state, cools towards ambient while idle; trip points step the
clock down, with hysteresis), on/off contention (a two-state Markov process), and
scripted :class:`Step` changes.

The calibrated figures of the ``rk3588`` profile against the core paper (noise and drift
off, decode at ``kv_len=128``) are listed at the end of ``configs/devices/rk3588.yaml``;
:func:`calibration_table` computes them and :func:`format_calibration_table` prints them.

Modules: :mod:`~adaptive_sched.sim.schema` (the profile's dataclasses),
:mod:`~adaptive_sched.sim.loading` (YAML in, validated profile out),
:mod:`~adaptive_sched.sim.costs` (the cost model), :mod:`~adaptive_sched.sim.drift`
(thermal, contention, scripted steps), :mod:`~adaptive_sched.sim.device` (the device on its
virtual clock), :mod:`~adaptive_sched.sim.calibration` (the figures against the paper) and
:mod:`~adaptive_sched.sim.anchors` (whole-model decode speeds against public figures).

Examples
--------
>>> from adaptive_sched.types import Shape
>>> dev = SimulatedDevice(load_profile("rk3588"), noise=False, thermal=False)
>>> shape = Shape(n=1, d=4096, kv_len=128, precision="int8")
>>> t = dev.run("qkv", shape, "gpu")
>>> t == dev.now > 0
True
>>> dev.run("attn", shape, "npu", after="gpu") > dev.expected_latency("attn", shape, "npu")
True
"""

from .anchors import AnchorRow, TokenLatency, anchor_table, format_anchor_table, token_latency
from .calibration import (
    CALIBRATION_KV_LEN,
    CalibrationRow,
    calibration_table,
    format_calibration_table,
    layer_latency,
)
from .costs import (
    StageCost,
    gemv_s,
    largest_buffer_bytes,
    latency_bound,
    roofline_s,
    stage_cost,
    transition_cost,
    why_unsupported,
)
from .device import SimulatedDevice
from .drift import Step
from .loading import load_profile
from .schema import Anchor, BackendProfile, DeviceProfile, TransitionProfile

__all__ = [
    "CALIBRATION_KV_LEN",
    "Anchor",
    "AnchorRow",
    "BackendProfile",
    "CalibrationRow",
    "DeviceProfile",
    "SimulatedDevice",
    "StageCost",
    "Step",
    "TokenLatency",
    "TransitionProfile",
    "anchor_table",
    "calibration_table",
    "format_anchor_table",
    "format_calibration_table",
    "gemv_s",
    "largest_buffer_bytes",
    "latency_bound",
    "layer_latency",
    "load_profile",
    "roofline_s",
    "stage_cost",
    "token_latency",
    "transition_cost",
    "why_unsupported",
]
