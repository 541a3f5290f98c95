"""Quantizer modules: ``ActQuant`` (activations, static or dynamic) and ``WeightQuant``.

``ActQuant`` has three states:

* ``float``   — identity (before calibration);
* ``observe`` — identity, while its observer streams statistics (inside ``calibrating``);
* ``quant``   — ``fake_quantize(x, S, Z)`` with the frozen ``S, Z`` buffers (saved in state_dict).

With ``spec.dynamic`` the range is taken from every input at run time
(``S, Z = choose_qparams(min(x), max(x))`` per tensor / per row of the granularity) and no
calibration is needed.

Example:
    >>> import torch
    >>> from lowbit.config import QuantSpec
    >>> from lowbit.quant import IntFormat, Affine
    >>> aq = ActQuant(QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine()))
    >>> aq.start_observing(); _ = aq(torch.linspace(0, 1, 11)); aq.finish_observing()
    >>> round(aq.scale.item() * 255, 6)
    1.0
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import QuantSpec
from ..errors import CalibrationError
from ..observe import make_observer
from ..observe.calibrate import Calibratable
from ..quant import PerChannel, choose_qparams_dynamic, fake_quantize


def torch_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec,
                        on_grid: bool = False) -> torch.Tensor:
    """The same fake-quantization through torch's built-in ops, which ``torch.onnx.export`` lowers to
    QuantizeLinear / DequantizeLinear pairs (used only while exporting; see :mod:`lowbit.export.onnx`).
    ``on_grid``: ``x`` already holds grid values (weights the exporter put on their grid beforehand)."""
    fmt = spec.format
    # ONNX QDQ knows the int8 / uint8 containers only; a narrower grid (e.g. 7-bit weights, 4-bit
    # activations) is applied first by lowbit's own fake-quant, then stored in the container.
    # Weights arrive on their grid already (onnx_export_mode), so the exported graph reads
    # QuantizeLinear(initializer) and the exporter can store the integer codes.
    if (fmt.bits < 8 or fmt.narrow_range) and not on_grid:
        x = fake_quantize(x, scale, zero_point, fmt, spec.granularity, spec.rounding)
    qmin, qmax = (-128, 127) if fmt.signed else (0, 255)
    if isinstance(spec.granularity, PerChannel):
        axis = spec.granularity.axis % x.ndim
        return torch.fake_quantize_per_channel_affine(x, scale.float(), zero_point.to(torch.int32), axis, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), qmin, qmax)


class ActQuant(Calibratable):
    """Activation fake-quantizer with an observer (see module docstring)."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.state = "float"
        self.observer = None
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self._saved_state = "float"
        self.__dict__["grid_source"] = None  # plain attribute: not a child module

    @property
    def calibrated(self) -> bool:
        return self.spec.dynamic or (self.state == "quant" and self.scale is not None)

    def share_grid_with(self, source: ActQuant) -> None:
        """Reuse ``source``'s calibrated ``(S, Z)`` instead of observing: for a quantizer whose input is
        already on ``source``'s grid (e.g. a conv reading a residual add's output), so the deployed graph
        has no requantization between the two (ONNX Runtime drops the redundant Q/DQ pair)."""
        self.__dict__["grid_source"] = source

    def start_observing(self) -> None:
        self._saved_state = self.state
        if self.spec.dynamic or self.grid_source is not None:
            return
        self.observer = make_observer(self.spec.observer, self.spec.granularity, **self.spec.observer_args)
        self.state = "observe"

    def has_observed(self) -> bool:
        if self.grid_source is not None:
            return self.grid_source.has_observed()
        return self.spec.dynamic or (self.observer is not None and self.observer.num_batches > 0)

    def finish_observing(self) -> None:
        if self.spec.dynamic:
            return
        if self.grid_source is not None:  # calibrating() finishes sources first
            self.set_qparams(self.grid_source.scale, self.grid_source.zero_point)
            return
        if self.observer is None or self.observer.num_batches == 0:
            raise CalibrationError(
                "an activation quantizer saw no data during calibration (a branch the calibration inputs never reach?)"
            )
        scale, zp = self.observer.qparams(self.spec.format, self.spec.mapping)
        self.scale, self.zero_point = scale, zp
        self.state = "quant"

    def abort_observing(self) -> None:
        self.state = self._saved_state
        self.observer = None

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Freeze given qparams (e.g. loaded from a checkpoint) and start quantizing."""
        self.scale, self.zero_point = scale.float(), zero_point.to(torch.int32)
        self.state = "quant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            return x
        s = self.spec
        if s.dynamic:
            scale, zp = choose_qparams_dynamic(x, s.format, s.mapping, s.granularity)
            return fake_quantize(x, scale, zp, s.format, s.granularity, s.rounding)
        if self.state == "observe":
            self.observer.update(x)
            return x
        if self.state == "quant":
            if getattr(self, "onnx_export", False):
                return torch_fake_quantize(x, self.scale, self.zero_point, s)
            return fake_quantize(x, self.scale, self.zero_point, s.format, s.granularity, s.rounding)
        return x

    def extra_repr(self) -> str:
        shared = ", shared grid" if self.grid_source is not None else ""
        return f"{self.spec.describe()}, state={self.state}{shared}"


class WeightQuant(nn.Module):
    """Weight fake-quantizer. Qparams are recomputed only when the weight tensor changes."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self._version: tuple[int, int] | None = None

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (id(w), w._version)
        if self.scale is None or key != self._version:
            if self.scale is not None and getattr(self, "_pinned", False) and self._on_grid(w):
                self._version = key  # a copy of the model (deepcopy, state_dict load) of the same grid values
                return self.scale, self.zero_point
            ob = make_observer(self.spec.observer, self.spec.granularity, **self.spec.observer_args)
            ob.update(w.detach())
            self.scale, self.zero_point = ob.qparams(self.spec.format, self.spec.mapping)
            self._version = key
            self._pinned = False
        return self.scale, self.zero_point

    def _on_grid(self, w: torch.Tensor) -> bool:
        s = self.spec
        with torch.no_grad():
            return torch.equal(fake_quantize(w.detach(), self.scale, self.zero_point, s.format, s.granularity, "nearest_even"), w.detach())

    def set_qparams(self, w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Pin given qparams for the current weight tensor (e.g. loaded from a packed checkpoint).

        They stay pinned while the weight is unchanged — also in a copy of the model (``deepcopy``,
        another tensor holding the same values) as long as the weight still lies on the pinned grid;
        a weight that is changed off the grid gets its qparams from the observer again."""
        self.scale, self.zero_point = scale.float(), zero_point.to(torch.int32)
        self._version = (id(w), w._version)
        self._pinned = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale, zp = self.qparams(w)
        if getattr(self, "onnx_export", False):
            return torch_fake_quantize(w, scale, zp, self.spec, on_grid=getattr(self, "onnx_on_grid", False))
        return fake_quantize(w, scale, zp, self.spec.format, self.spec.granularity, self.spec.rounding)

    def extra_repr(self) -> str:
        return self.spec.describe()
