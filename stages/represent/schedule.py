"""A progressive-resizing schedule: the training image size as a function of the epoch."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic import Field as PField
from pydantic.dataclasses import dataclass

MAX_SIDE = 16384


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ResizeSchedule:
    """Image size per epoch: small first, a linear ramp, then an optional final phase.

    The fast.ai / FFCV recipe ("ImageNet in 18 minutes"; ffcv-imagenet's
    ``get_resolution``): ``start_size`` up to ``start_epoch``, a linear ramp in between,
    rounded to the nearest multiple of ``multiple`` (ties to even, as ``numpy.round``; kept
    between the two sizes), ``end_size`` from ``end_epoch`` on, and ``final_size`` from
    ``final_epoch`` on when given (e.g. a few epochs at full resolution). Epochs count from 0.

    Examples
    --------
    >>> s = ResizeSchedule(160, 192, 65, 76)  # ffcv-imagenet rn50_88_epochs.yaml
    >>> [s.size(e) for e in (0, 65, 70, 71, 76, 87)]
    [160, 160, 160, 192, 192, 192]
    >>> s = ResizeSchedule(96, 224, 1, 5, final_size=256, final_epoch=7)
    >>> s.sizes(9)
    [96, 96, 128, 160, 192, 224, 224, 256, 256]
    """

    start_size: int = PField(ge=1, le=MAX_SIDE)
    end_size: int = PField(ge=1, le=MAX_SIDE)
    start_epoch: int = PField(ge=0)
    end_epoch: int = PField(ge=0)
    final_size: int | None = PField(None, ge=1, le=MAX_SIDE)
    final_epoch: int | None = PField(None, ge=0)
    multiple: int = PField(32, ge=1, le=MAX_SIDE)

    def __post_init__(self) -> None:
        if self.end_epoch < self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must not be before start_epoch ({self.start_epoch})"
            )
        if (self.final_size is None) != (self.final_epoch is None):
            raise ValueError("give both final_size and final_epoch, or neither")
        if self.final_epoch is not None and self.final_epoch < self.end_epoch:
            raise ValueError(
                f"final_epoch ({self.final_epoch}) must not be before end_epoch ({self.end_epoch})"
            )

    def size(self, epoch: int) -> int:
        """The image side for ``epoch`` (0-based)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"The 'epoch' parameter of ResizeSchedule.size must be an int >= 0. Got {epoch!r}."
            )
        if self.final_epoch is not None and epoch >= self.final_epoch:
            return int(self.final_size)  # type: ignore[arg-type]
        if epoch >= self.end_epoch:  # first: with start_epoch == end_epoch, a step there
            return self.end_size
        if epoch <= self.start_epoch:
            return self.start_size
        frac = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        raw = self.start_size + frac * (self.end_size - self.start_size)
        rounded = round(raw / self.multiple) * self.multiple  # ties to even, as numpy.round
        lo, hi = sorted((self.start_size, self.end_size))
        return min(max(rounded, lo), hi)

    def sizes(self, epochs: int) -> list[int]:
        """The sizes of epochs ``0 .. epochs - 1``."""
        return [self.size(e) for e in range(epochs)]

    def batch_size(
        self, epoch: int, base_batch: int, *, base_size: int | None = None, multiple: int = 8
    ) -> int:
        """A batch size for ``epoch`` that keeps the pixels per batch of ``base_batch`` images
        of ``base_size`` (default: the largest size of the schedule): larger batches at low
        resolution, as in the
        fast.ai ImageNet runs. Rounded down to a multiple of ``multiple`` (below one multiple,
        to a whole number, at least 1), so a batch never holds more pixels than the base
        batch; scale the learning rate with it in the training loop.

        Examples
        --------
        >>> s = ResizeSchedule(128, 224, 0, 10)
        >>> s.batch_size(0, 256), s.batch_size(10, 256)
        (784, 256)
        """
        for name, value in (("base_batch", base_batch), ("multiple", multiple)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The {name!r} parameter of ResizeSchedule.batch_size must be an int >= 1. "
                    f"Got {value!r}."
                )
        largest = max(self.start_size, self.end_size, self.final_size or 0)
        ref = largest if base_size is None else base_size
        if isinstance(ref, bool) or not isinstance(ref, int) or not 1 <= ref <= MAX_SIDE:
            raise ValueError(
                f"The 'base_size' parameter of ResizeSchedule.batch_size must be an int in "
                f"[1, {MAX_SIDE}]. Got {base_size!r}."
            )
        side = self.size(epoch)
        batch = base_batch * ref * ref // (side * side)
        if batch < multiple:  # never more pixels than the base batch, never an empty batch
            return max(1, batch)
        return batch // multiple * multiple
