"""Sleep stages: the AASM class order, the R&K -> AASM mapping of Sleep-EDF annotations, hypnogram stage names.

The classes, in index order, are ``W, N1, N2, N3, REM`` (AASM manual, 2007). Sleep-EDF hypnograms were
scored by Rechtschaffen & Kales (1968): stages 3 and 4 merge into N3, ``Sleep stage ?`` (not scored) and
``Movement time`` carry no stage and their epochs are dropped.
"""

from __future__ import annotations

from edgetta.errors import DataError

STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
W, N1, N2, N3, REM = range(5)
UNKNOWN = -1  # a label that is not known (no hypnogram)
DROP = -2  # a scored epoch without a stage: "?" or movement time; dropped by the reader

# Sleep-EDF (R&K) annotation texts, lower-cased, to a class index or DROP.
ANNOTATIONS: dict[str, int] = {
    "sleep stage w": W,
    "sleep stage 1": N1,
    "sleep stage 2": N2,
    "sleep stage 3": N3,
    "sleep stage 4": N3,
    "sleep stage r": REM,
    "sleep stage ?": DROP,
    "movement time": DROP,
}

# Stage names accepted in CSV hypnograms (lower-cased, blanks stripped) to a class index or DROP.
NAMES: dict[str, int] = {
    "w": W,
    "wake": W,
    "n1": N1,
    "1": N1,
    "s1": N1,
    "n2": N2,
    "2": N2,
    "s2": N2,
    "n3": N3,
    "3": N3,
    "s3": N3,
    "n4": N3,
    "4": N3,
    "s4": N3,
    "rem": REM,
    "r": REM,
    "?": DROP,
    "unknown": DROP,
    "m": DROP,
    "mt": DROP,
    "movement": DROP,
    "movement time": DROP,
}


def annotation_stage(text: str) -> int | None:
    """Class index (or DROP) of a Sleep-EDF annotation text; None when the text is not a stage annotation."""
    return ANNOTATIONS.get(" ".join(text.split()).lower())


def parse_stage(text: str, *, where: str = "") -> int:
    """Class index (or DROP for ``?`` and movement) of a hypnogram stage name: W, N1-N4, S1-S4, 1-4, REM/R, ?,
    case-insensitive; a Sleep-EDF annotation text works too. Unknown text -> DataError naming ``where``."""
    key = " ".join(str(text).split()).lower()
    if key in NAMES:
        return NAMES[key]
    if key in ANNOTATIONS:
        return ANNOTATIONS[key]
    accepted = "W, N1, N2, N3, N4, REM, R, 1, 2, 3, 4, ? (or Sleep-EDF texts like 'Sleep stage 2')"
    raise DataError(f"{where + ': ' if where else ''}unknown sleep stage {text!r}; use one of {accepted}")


def stage_name(index: int) -> str:
    """Name of a class index (``-1`` -> ``"?"``)."""
    return STAGES[index] if 0 <= index < len(STAGES) else "?"
