"""MER corpus readers on small fake copies of each layout (xlsx written here), the canonical CSV, bad rows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest

from core.errors import UserError
from core.mer.clips import Clip
from core.mer.corpora import (
    ClipError,
    check_clips,
    frame_file,
    read_canonical,
    read_dataset,
    read_onset_apex,
    write_canonical,
)

FRAME_SIZE = 8  # pixels a side of the fake frames
CASME2_HEADER = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"]
SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration"]
SAMM_HEADER += ["Type", "Action Units", "Notes", "Estimated Emotion"]
SAMM_HEADER_ROW = 14


def _frames(folder: Path, names: list[str], *, grey: int = 0) -> None:
    """Frames `names` in `folder`, frame k a flat grey of `grey + 10 k`."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((FRAME_SIZE, FRAME_SIZE, 3), grey + 10 * k, np.uint8))


def _sheet(path: Path, rows: list[list], *, header_row: int = 1) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    for k in range(1, header_row):
        sheet.append([f"SAMM notes line {k}"] if k % 3 else [])
    for row in rows:
        sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def _casme2(root: Path, rows: list[list]) -> Path:
    """A CASME II copy: coding sheet, raw frames img{N}.jpg and cropped frames reg_img{N}.jpg."""
    _sheet(root / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + rows)
    for subject, clip, first, last in (("sub01", "EP02_01f", 46, 52), ("sub02", "EP03_02", 10, 14)):
        for kind, prefix in (("CASME2_RAW_selected", "img"), ("Cropped", "reg_img")):
            _frames(root / kind / subject / clip, [f"{prefix}{n}.jpg" for n in range(first, last + 1)])
    return root


CASME2_ROWS = [
    [1, "EP02_01f", 46, 49, 52, "happiness"],  # subject written as a number
    ["02", "EP03_02 ", 10, "/", 14, "repression  "],  # apex unknown, spaces around the name and the label
]


def test_casme2_reads_the_cropped_set_and_applies_the_annotation_rules(tmp_path):
    root = _casme2(tmp_path / "CASME2", CASME2_ROWS)
    copy = read_dataset(f"casme2={root}")
    assert copy.name == "casme2" and copy.cropped
    assert copy.clips == [
        Clip("casme2", "sub01", "EP02_01f", root / "Cropped/sub01/EP02_01f", 46, 49, "happiness", 52),
        Clip("casme2", "sub02", "EP03_02", root / "Cropped/sub02/EP03_02", 10, 12, "repression", 14),  # (10+14)//2
    ]
    notes = "\n".join(copy.notes)
    assert "Cropped" in notes and "rows 3: apex '/'" in notes and "rows 3: spaces" in notes
    assert frame_file(copy.clips[0], 49).name == "reg_img49.jpg"


def test_casme2_raw_frames_when_path_names_the_raw_folder(tmp_path):
    root = _casme2(tmp_path / "CASME2", CASME2_ROWS)
    copy = read_dataset(f"casme2={root / 'CASME2_RAW_selected'}")  # the sheet is found in the parent
    assert not copy.cropped and copy.clips[0].frames == root / "CASME2_RAW_selected/sub01/EP02_01f"
    onset, apex = read_onset_apex(copy.clips[0])
    assert onset.shape == (FRAME_SIZE, FRAME_SIZE, 3) and onset.dtype == np.uint8
    assert abs(int(onset.mean()) - 0) <= 2 and abs(int(apex.mean()) - 30) <= 2  # frame 49 is the 4th: grey 30


def test_casme2_frames_unpacked_into_a_folder_of_their_own_name(tmp_path):
    root = _casme2(tmp_path / "CASME2", CASME2_ROWS)
    for kind in ("CASME2_RAW_selected", "Cropped"):  # Cropped/sub01 -> Cropped/Cropped/sub01, as archives unpack
        (root / kind).rename(root / f"{kind}.tmp")
        (root / kind).mkdir()
        (root / f"{kind}.tmp").rename(root / kind / kind)
    copy = read_dataset(f"casme2={root}")
    assert copy.cropped and copy.clips[0].frames == root / "Cropped/Cropped/sub01/EP02_01f"


def test_casme2_offset_zero_is_unknown(tmp_path):
    root = _casme2(tmp_path / "CASME2", [[1, "EP02_01f", 46, 49, 0, "happiness"]])
    copy = read_dataset(f"casme2={root}")
    assert copy.clips[0].offset is None and any("offset 0" in note and "rows 2" in note for note in copy.notes)


@pytest.mark.parametrize(
    "row, message",
    [
        ([1, "EP02_01f", 46, 53, 52, "happiness"], r"row 2, clip casme2/sub01/EP02_01f: apex 53 after offset 52"),
        ([1, "EP02_01f", 46, 45, 52, "happiness"], r"row 2, clip casme2/sub01/EP02_01f: apex 45 before onset 46"),
        ([1, "EP02_01f", 40, 49, 52, "happiness"], r"row 2, clip casme2/sub01/EP02_01f: onset frame 40 not in"),
        ([1, "EP09_09", 46, 49, 52, "happiness"], r"row 2, clip casme2/sub01/EP09_09: frames .*EP09_09 not found"),
        ([1, "EP02_01f", "x", 49, 52, "happiness"], r"row 2: OnsetFrame 'x' is not a frame number"),
        ([1, "EP02_01f", 46, "/", 0, "happiness"], r"row 2: apex and offset both unknown"),
        ([1, "EP02_01f", 46, 49, 52, None], r"row 2: Estimated Emotion is empty"),
    ],
)
def test_casme2_bad_rows_are_named(tmp_path, row, message):
    root = _casme2(tmp_path / "CASME2", [CASME2_ROWS[1], row])
    with pytest.raises(UserError, match=message.replace("row 2", "row 3")):
        read_dataset(f"casme2={root}")


def test_a_duplicate_row_is_named_with_its_first_row(tmp_path):
    root = _casme2(tmp_path / "CASME2", [CASME2_ROWS[0], CASME2_ROWS[1], CASME2_ROWS[0]])
    with pytest.raises(UserError, match=r"row 4, clip casme2/sub01/EP02_01f: duplicate of row 2"):
        read_dataset(f"casme2={root}")


SAMM_ROWS = [
    [6, "006_1_2", "006_1", 5560, 5563, 5566, 7, "Micro - 1/2", "R12", "", "Happiness"],
    ["007", "007_3_1", "007_3", 120, "/", 126, 7, "Micro - 1/2", "AU4", "", "Anger "],
]


def _samm(root: Path, rows: list[list] = SAMM_ROWS) -> Path:
    """A SAMM copy: clip 006_1_2 with 5-digit frames 5560-5566, clip 007_3_1 with 4-digit frames 0120-0126."""
    _sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx", [SAMM_HEADER] + rows, header_row=SAMM_HEADER_ROW)
    _frames(root / "006/006_1_2", [f"006_{n:05d}.jpg" for n in range(5560, 5567)])
    _frames(root / "007/007_3_1", [f"007_{n:04d}.jpg" for n in range(120, 127)])
    return root


def test_samm_header_on_row_14_subjects_padded_four_and_five_digit_frames(tmp_path):
    root = _samm(tmp_path / "SAMM")
    copy = read_dataset(f"samm={root}")
    assert not copy.cropped
    assert copy.clips == [
        Clip("samm", "006", "006_1_2", root / "006/006_1_2", 5560, 5563, "Happiness", 5566),
        Clip("samm", "007", "007_3_1", root / "007/007_3_1", 120, 123, "Anger", 126),
    ]
    assert frame_file(copy.clips[1], 123).name == "007_0123.jpg"
    assert any("rows 16: apex '/'" in note for note in copy.notes)  # header on 14, clips on 15 and 16


def test_samm_minus_one_is_an_unknown_apex_or_offset(tmp_path):
    # SAMM's sheets write -1 where nobody annotated the apex or offset: the apex is then the middle frame
    rows = [SAMM_ROWS[0][:4] + [-1] + SAMM_ROWS[0][5:], SAMM_ROWS[1][:4] + [123, -1] + SAMM_ROWS[1][6:]]
    copy = read_dataset(f"samm={_samm(tmp_path / 'SAMM', rows)}")
    assert [(clip.onset, clip.apex, clip.offset) for clip in copy.clips] == [(5560, 5563, 5566), (120, 123, None)]
    notes = "\n".join(copy.notes)
    assert "rows 15: apex '/' or -1" in notes and "rows 16: offset 0, '/' or -1" in notes


def _smic(root: Path) -> Path:
    for kind, prefix in (("SMIC_all_raw", "image"), ("SMIC_all_cropped", "reg_image")):
        hs = root / kind / "HS"
        _frames(hs / "s1/micro/negative/s1_ne_01", [f"{prefix}{n:06d}.bmp" for n in range(100, 106)])
        _frames(hs / "s2/micro/surprise/s2_sur_01", [f"{prefix}{n:06d}.bmp" for n in range(7, 12)])
        (hs / "s3").mkdir()  # a subject without micro-expressions
    return root


def test_smic_takes_the_cropped_set_and_the_middle_frame_as_apex(tmp_path):
    root = _smic(tmp_path / "SMIC")
    copy = read_dataset(f"smic={root}")
    hs = root / "SMIC_all_cropped/HS"
    assert copy.cropped
    assert copy.clips == [
        # 6 frames 100-105: the lower middle, 102; 5 frames 7-11: the middle, 9
        Clip("smic", "s1", "s1_ne_01", hs / "s1/micro/negative/s1_ne_01", 100, 102, "negative", 105),
        Clip("smic", "s2", "s2_sur_01", hs / "s2/micro/surprise/s2_sur_01", 7, 9, "surprise", 11),
    ]
    assert any("middle frame" in note and "MEGC 2019" in note for note in copy.notes)
    raw = read_dataset(f"smic={root / 'SMIC_all_raw'}")
    assert not raw.cropped and raw.clips[0].frames == root / "SMIC_all_raw/HS/s1/micro/negative/s1_ne_01"


def test_smic_clip_of_one_frame_is_named(tmp_path):
    folder = tmp_path / "HS/s1/micro/positive/s1_po_01"
    _frames(folder, ["image1.bmp"])
    with pytest.raises(UserError, match=r"s1_po_01 has 1 numbered frame\(s\)"):
        read_dataset(f"smic={tmp_path / 'HS'}")


def _clip(frames: Path, onset: int = 1, apex: int = 3, **changes) -> Clip:
    fields = dict(dataset="mine", subject="a", clip="c1", frames=frames, onset=onset, apex=apex, label="joy")
    return Clip(**{**fields, **changes})


def test_canonical_round_trip_and_read_dataset(tmp_path):
    _frames(tmp_path / "frames/c1", [f"f{n:03d}.png" for n in range(1, 5)], grey=100)
    clips = [_clip(tmp_path / "frames/c1", label="joy"), _clip(tmp_path / "frames/c1", clip="c2", label="x", offset=4)]
    path = tmp_path / "mine.csv"
    write_canonical(path, clips, cropped=True)
    assert path.read_text().splitlines()[:2] == [
        "dataset,subject,clip,frames,onset,apex,label,offset,cropped",
        "mine,a,c1,frames/c1,1,3,joy,,true",
    ]
    assert read_canonical(path) == clips
    copy = read_dataset(f"mine={path}")
    assert copy.cropped and copy.clips == clips
    onset, apex = read_onset_apex(clips[0])
    assert onset[0, 0].tolist() == [100, 100, 100] and apex[0, 0].tolist() == [120, 120, 120]  # PNG: exact


def test_canonical_without_cropped_column_is_full_frames(tmp_path):
    _frames(tmp_path / "c1", ["1.png", "2.png"])
    path = tmp_path / "mine.csv"
    path.write_text(f"dataset,subject,clip,frames,onset,apex,label\nmine,a,c1,{tmp_path / 'c1'},1,2,joy\n")
    copy = read_dataset(f"mine={path}")
    assert not copy.cropped and "no cropped column" in copy.notes[0]
    with pytest.raises(UserError, match=r"mine.csv line 2: dataset 'mine', but --dataset names this file 'other'"):
        read_dataset(f"other={path}")


@pytest.mark.parametrize(
    "body, message",
    [
        ("dataset,subject,clip,frames,onset,apex\n", r"line 1: no column 'label'"),
        ("dataset,subject,clip,frames,onset,apex,label,extra\n", r"line 1: unknown column 'extra'"),
        ("dataset,subject,clip,frames,onset,apex,label,offset,offset\n", r"line 1: a column repeated"),
        ("dataset,subject,clip,frames,onset,apex,label\nmine,a,c1,c1,one,2,joy\n", r"line 2: onset 'one' is not"),
        ("dataset,subject,clip,frames,onset,apex,label\nmine,a,,c1,1,2,joy\n", r"line 2: clip is empty"),
        ("dataset,subject,clip,frames,onset,apex,label\nmine,a,c1,c1,1,2\n", r"line 2: 6 fields, the header has 7"),
    ],
)
def test_canonical_bad_rows_are_named(tmp_path, body, message):
    (tmp_path / "mine.csv").write_text(body)
    with pytest.raises(UserError, match=message):
        read_canonical(tmp_path / "mine.csv")


def test_check_clips_names_every_problem_count(tmp_path):
    _frames(tmp_path / "c1", ["1.png", "2.png", "3.png"])
    clips = [_clip(tmp_path / "c1"), _clip(tmp_path / "c9", clip="c2"), _clip(tmp_path / "c1", clip="c3", apex=7)]
    with pytest.raises(UserError) as caught:
        check_clips(clips, "mine.csv", rows=["line 2", "line 3", "line 4"])
    assert str(caught.value) == f"mine.csv line 3, clip mine/a/c2: frames {tmp_path / 'c9'} not found " + (
        "(and 1 more rows with problems)"
    )
    check_clips(clips[:1], "mine.csv")


def test_a_damaged_frame_fails_its_clip_alone_naming_the_file(tmp_path):
    _frames(tmp_path / "c1", ["1.png", "2.png", "3.png"])
    (tmp_path / "c1/3.png").write_bytes(b"not an image")
    with pytest.raises(ClipError, match=r"clip mine/a/c1: cannot read .*3.png"):
        read_onset_apex(_clip(tmp_path / "c1"))
    with pytest.raises(ClipError, match=r"clip mine/a/c1: no frame numbered 9"):
        frame_file(_clip(tmp_path / "c1"), 9)


def test_video_clips_are_read_by_zero_based_index(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (16, 16))
    for k in range(5):
        writer.write(np.full((16, 16, 3), 40 * k, np.uint8))
    writer.release()
    onset, apex = read_onset_apex(_clip(video, onset=0, apex=3))
    assert abs(int(onset.mean()) - 0) <= 3 and abs(int(apex.mean()) - 120) <= 3
    with pytest.raises(UserError, match=r"row 1, clip mine/a/c1: onset 0 or apex 9 outside video"):
        check_clips([_clip(video, onset=0, apex=9)], "list")


def test_read_dataset_spec_errors():
    with pytest.raises(UserError, match="expected NAME=PATH"):
        read_dataset("casme2")
    with pytest.raises(UserError, match="'casme3' has no reader"):
        read_dataset("casme3=/nowhere")


def test_an_annotation_file_that_is_no_workbook_is_named(tmp_path):
    root = _casme2(tmp_path / "CASME2", CASME2_ROWS)
    (root / "CASME2-coding-20140508.xlsx").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"cannot read .*CASME2-coding-20140508.xlsx as an xlsx workbook"):
        read_dataset(f"casme2={root}")
