"""One micro-expression clip, as every corpus reader and the canonical CSV describe it.

The canonical CSV (`dataset,subject,clip,frames,onset,apex,label`) can describe any corpus:
`frames` is a folder of frames or a video file; `onset` and `apex` are frame numbers as the
dataset names them: in a folder, the number at the end of a frame file's name (leading zeros
ignored: `img46.jpg`, `006_05562.jpg`); in a video, the 0-based frame index (as `--pairs`).
`label` is the dataset's own emotion word; a protocol (`core.mer.protocol`) maps it to a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CANONICAL_COLUMNS = ("dataset", "subject", "clip", "frames", "onset", "apex", "label")


@dataclass(frozen=True)
class Clip:
    """One clip of one subject: where its frames are, its onset and apex frame, its label."""

    dataset: str  # short lower-case name: "casme2", "samm", "smic", "casme3" or the user's own
    subject: str  # as the dataset names it; unique within the dataset
    clip: str  # as the dataset names it; unique within the subject
    frames: Path  # a folder of frames or a video file
    onset: int  # frame number (see the module's docstring)
    apex: int
    label: str  # the dataset's emotion word, as written there
    offset: int | None = None  # where the annotations give one; apex must lie in [onset, offset]

    @property
    def group(self) -> str:
        """The leave-one-subject-out group: subjects of different datasets are different people."""
        return f"{self.dataset}/{self.subject}"

    @property
    def key(self) -> tuple[str, str, str]:
        """(dataset, subject, clip): unique within a corpus, the key of caches and predictions."""
        return (self.dataset, self.subject, self.clip)
