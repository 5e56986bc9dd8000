"""Decoding a job's image inputs within its work budget.

The API checked every input at upload and submission; the worker checks again before it
decodes (the budget may have been lowered since, an archive entry was only seen by its header,
an upload may predate the check), from the bytes alone, then decodes one image at a time,
resizing right away when the job needs a working size, and counts the decoded pixels against
the job's budget as it goes."""
from __future__ import annotations

from typing import TYPE_CHECKING

from worker.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

    from worker.context import JobContext


class InputBudget:
    """One job's decode budget: per-image structure limits and the job's pixel sum."""

    def __init__(self, settings):
        from service.imagescan import StructureLimits

        self.limits = StructureLimits.from_settings(settings)
        self.max_job_pixels = settings.max_job_pixels
        self.pixels = 0

    def check(self, data: bytes, field: str):
        """Structure of one input (nothing decoded); InvalidInput beyond a budget."""
        from service.imagescan import StructureError, scan

        try:
            structure = scan(data, self.limits)
        except StructureError as exc:
            setting = f" (VISIONJOBS_{exc.setting.upper()})" if exc.setting else ""
            raise InvalidInput(f"{field}: {exc}{setting}") from exc
        self.pixels += structure.pixels
        if self.pixels > self.max_job_pixels:
            raise InvalidInput(f"{field}: the job's images add up to more than {self.max_job_pixels} pixels "
                               "(VISIONJOBS_MAX_JOB_PIXELS)")
        return structure

    def decode(self, data: bytes, field: str, *, size: tuple[int, int] | None = None) -> "Image.Image":
        """Check, then decode to upright RGB (resized to `size` right after decoding)."""
        return self.decode_sized(data, field, size=size)[0]

    def decode_sized(self, data: bytes, field: str, *,
                     size: tuple[int, int] | None = None) -> tuple["Image.Image", tuple[int, int]]:
        """`decode`, also returning the upright size before resizing."""
        from models.media import decode_image

        self.check(data, field)
        try:
            return decode_image(data, self.limits.max_pixels, size=size)
        except Exception as exc:
            raise InvalidInput(f"{field}: cannot decode the upload ({exc})") from exc


def budget(ctx: "JobContext") -> InputBudget:
    """The job's budget (one per job: it sums the job's pixels)."""
    found = getattr(ctx, "_input_budget", None)
    if found is None:
        found = ctx._input_budget = InputBudget(ctx.runner.settings)
    return found
