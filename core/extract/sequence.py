"""One sequence, from its frame source to its files in `--output`: `extract_sequence`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.extract.faces import crop_frames, face_crop, face_note, face_record
from core.extract.flows import check_flows_finite, sequence_flows
from core.extract.outputs import (
    SAVE_FORMATS,
    OutputKinds,
    OutputPlan,
    SequenceWriter,
    describe_replaced,
    pair_origin,
    plan_outputs,
    write_face_files,
    write_strain_table,
)
from core.face.crop import FaceCrop, FaceCropOptions
from core.inference import Estimator
from core.strain import PairMeasures
from core.utils.frames import Frame, FrameSource
from core.utils.progress import progress_bar


@dataclass(frozen=True)
class ExtractOptions:
    """How a sequence's flows are computed and written (the options of get_flow.py that act on one sequence)."""

    output: Path
    save_format: str | None = None  # a key of SAVE_FORMATS (None: visualisations only)
    max_flow: float | None = None  # px of full colour saturation (None: each pair's largest magnitude)
    batch_size: int = 1
    warm_start: bool = False
    overwrite: bool = False  # replace files in the way that no run on this input wrote
    face: FaceCropOptions | None = None  # crop every frame to the face (None: the whole frame)
    save_strain: bool = False  # the expression flow's strain maps and the per-pair means

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.batch_size > 1 and self.warm_start:
            raise UserError("--warm_start starts each pair from the previous one: it needs --batch_size 1")
        if self.max_flow is not None and not (math.isfinite(self.max_flow) and self.max_flow > 0):
            raise UserError(f"--max_flow must be a positive number, got {self.max_flow}")
        if self.save_format is not None and self.save_format not in SAVE_FORMATS:
            raise UserError(f"unknown flow format {self.save_format!r} (one of {', '.join(sorted(SAVE_FORMATS))})")
        if self.face is not None and self.face.paste_back and self.save_format is None:
            raise UserError("--paste_back writes flow files: give --save_format (or --save_flo)")

    @property
    def extension(self) -> str | None:
        return SAVE_FORMATS[self.save_format][0] if self.save_format else None

    def kinds(self, *, table: bool = True) -> OutputKinds:
        """The files of each pair and of the sequence (`table`: the sequence's own strain table)."""
        paste_back = self.face is not None and self.face.paste_back
        return OutputKinds(
            self.extension, paste_back, self.face is not None, self.save_strain, self.save_strain and table
        )


@dataclass
class SequenceResult:
    """What `extract_sequence` wrote."""

    output: Path
    names: list[str]  # one per pair, in order
    kinds: OutputKinds
    video: Path | None
    warning: str | None = None  # a video that decoded fewer frames than its container announces
    crop: FaceCrop | None = None
    measures: list[PairMeasures] = field(default_factory=list)  # with save_strain: one per pair
    sequence_files: list[Path] = field(default_factory=list)  # face crop JSON and picture, strain table

    @property
    def visualisations(self) -> list[Path]:
        return [self.output / f"{name}_flow.png" for name in self.names]


class SequenceStopped(UserError):
    """Bad input (a damaged frame, a flow that is not finite, a file in the way) stopped a sequence
    after `written` pairs had been written to `output`; its message is the cause's."""

    def __init__(self, cause: Exception, *, output: Path, written: list[str]) -> None:
        super().__init__(str(cause))
        self.output, self.written = output, written

    def written_note(self) -> str:
        """What the stopped sequence left, for a run of this sequence alone."""
        if not self.written:
            return "no pair was written"
        if len(self.written) == 1:
            return f"written before it: 1 pair in {self.output} ({self.written[0]})"
        pairs = f"{self.written[0]} to {self.written[-1]}"
        return f"written before it: {len(self.written)} pairs in {self.output} ({pairs})"


def _make_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--output {output}: cannot create the folder ({error.strerror or error})") from None


def _cropped(
    source: FrameSource, options: ExtractOptions, plan: OutputPlan, log: Callable[[str], None]
) -> tuple[Iterator[Frame], FaceCrop | None]:
    """The frames the flow sees: the source's, or (face crop) each cropped to the sequence's one
    square, planned from sampled frames and recorded in `<sequence>_face.json` first."""
    if options.face is None:
        return iter(source), None
    crop, first = face_crop(source, options.face)
    if (note := face_note(crop, source)) is not None:
        log(note)
    origin = pair_origin(*next(source.planned()))
    write_face_files(plan, crop, face_record(source, crop, options.face), first.rgb, origin)
    return crop_frames(iter(source), crop), crop


def extract_sequence(
    source: FrameSource,
    estimator: Estimator,
    options: ExtractOptions,
    *,
    inputs: list[tuple[str, Path | str]],
    log: Callable[[str], None] = print,
    progress: bool = True,
    strain_table: bool = True,
    on_pair: Callable[[], None] | None = None,
) -> SequenceResult:
    """Estimate and write the flows of every pair of `source`; UserError (one line) when an output
    would be an input (`inputs`: (what, path)), a file of another run is in the way, a flow is not
    finite, a file cannot be written, no sampled frame has a face (face crop), or the source gives
    no pair. `progress`: a bar over the pairs of a folder or video; `on_pair` is called after each
    pair written (a corpus's bar). `strain_table` (with `save_strain`): write the sequence's
    `<sequence>_strain.csv` (a caller that gathers several sequences' `measures` in one table
    passes False)."""
    kinds = options.kinds(table=strain_table)
    plan = plan_outputs(source, options.output, kinds, overwrite=options.overwrite, inputs=inputs)
    _make_folder(options.output)
    if (line := describe_replaced(plan)) is not None:
        log(line)
    frames, crop = _cropped(source, options, plan, log)
    show = progress and source.shows_progress()
    bar = progress_bar(total=source.pairs, desc="flow", unit="pair") if show else None
    writer = SequenceWriter(
        plan,
        source,
        save_format=options.save_format,
        max_flow=options.max_flow,
        overwrite=options.overwrite,
        crop=crop,
    )
    try:
        with writer:
            pairs = sequence_flows(estimator, frames, batch_size=options.batch_size, warm_start=options.warm_start)
            for pair in pairs:
                check_flows_finite(pair)
                writer.write(pair)
                if bar is not None:
                    bar.update(1)
                if on_pair is not None:
                    on_pair()
    except UserError as error:
        raise SequenceStopped(error, output=options.output, written=list(writer.names)) from error
    finally:
        if bar is not None:
            bar.close()
    shortfall = source.shortfall()
    if not writer.names:
        raise UserError(source.no_pair_reason())
    if kinds.table:
        write_strain_table(plan.sequence[-1], writer.measures, cropped=crop is not None)
    return SequenceResult(
        options.output, writer.names, kinds, plan.video, shortfall, crop, writer.measures, plan.sequence
    )
