"""The program and kernel cache (each variant built once per device), and kernel launches."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import ExecutorError
from . import kernels
from .device import Device, compile_program, short_error

logger = logging.getLogger(__name__)


@dataclass
class Launch:
    """Events of one run, for the timing breakdown."""

    kernels: list[tuple[str, Any]] = field(default_factory=list)
    transfers: list[Any] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)  # host arrays in flight (non-blocking uploads)


class ProgramCache:
    """Built programs by source name and macros, and their kernels (not locked: the executor is).

    Parameters
    ----------
    owner
        Names the executor in error messages.
    build_options
        Extra options of every build (the quantisation kernels use the device's own).
    """

    def __init__(self, owner: str, build_options: str = "") -> None:
        self.owner = owner
        self.build_options = build_options
        self.builds = 0
        #: kernel launches at a work size not seen before (PoCL compiles its work-group loop then)
        self.first_launches = 0
        self._launched: set[tuple[int, tuple[int, ...], tuple[int, ...] | None]] = set()
        self._programs: dict[tuple[str, tuple[tuple[str, int], ...]], Any] = {}
        self._kernels: dict[tuple[int, str], Any] = {}

    def kernel(self, dev: Device, source_name: str, kernel_name: str, macros: Mapping[str, int]) -> Any:
        """The kernel ``kernel_name`` of program ``source_name`` built with ``macros`` (built once)."""
        key = (source_name, tuple(sorted(macros.items())))
        program = self._programs.get(key)
        if program is None:
            source = kernels.PRELUDE + getattr(kernels, source_name)
            options = dev.quantize_options if source_name == "QUANTIZE" else self.build_options
            options += "".join(f" -D{k}={v}" for k, v in key[1])
            start = time.perf_counter()
            try:
                program = compile_program(dev.cl, dev.context, source, options)
            except Exception as exc:
                raise ExecutorError(
                    f"{self.owner}: building {source_name} with {options.strip()!r} failed on "
                    f"{dev.device.name!r}: {short_error(exc)}"
                ) from exc
            self._programs[key] = program
            self.builds += 1
            logger.debug("built %s %s in %.3f s", source_name, dict(key[1]), time.perf_counter() - start)
        kkey = (id(program), kernel_name)
        kernel = self._kernels.get(kkey)
        if kernel is None:
            kernel = self._kernels[kkey] = dev.cl.Kernel(program, kernel_name)
        return kernel

    def enqueue(
        self, dev: Device, launch: Launch, name: str, kernel: Any, gsize: tuple, lsize: tuple | None, *args: Any
    ) -> None:
        """Launch ``kernel`` with ``args`` over ``gsize`` (``lsize``), recording its event in ``launch``."""
        key = (id(kernel), tuple(gsize), None if lsize is None else tuple(lsize))
        if key not in self._launched:
            self._launched.add(key)
            self.first_launches += 1
        kernel.set_args(*args)
        launch.kernels.append((name, dev.cl.enqueue_nd_range_kernel(dev.queue, kernel, gsize, lsize)))

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        """Forget every program and kernel (the device is being closed)."""
        self._kernels.clear()
        self._programs.clear()
        self._launched.clear()
