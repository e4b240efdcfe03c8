"""MER protocols: the MEGC 2019 mapping and its published counts, the user's mapping, frozen clip lists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import UserError
from core.mer.clips import Clip
from core.mer.protocol import (
    MEGC2019_MAPPING,
    class_mapping,
    count_table,
    count_warnings,
    groupings,
    select,
)

# The published MEGC 2019 composite, as (dataset, subjects, {label as the dataset writes it: clips}).
# CASME II: negative 88 = disgust 63 + repression 25; SAMM: negative 92 = Anger 57 + Contempt 12 +
# Disgust 9 + Sadness 6 + Fear 8; SMIC-HS labels are the class words.
PUBLISHED_COPIES = [
    ("casme2", 24, {"disgust": 63, "repression": 25, "happiness": 32, "surprise": 25, "others": 99, "fear": 2}),
    ("samm", 28, {"Anger": 57, "Contempt": 12, "Disgust": 9, "Sadness": 6, "Fear": 8, "Happiness": 26, "Surprise": 15}),
    ("smic", 16, {"negative": 70, "positive": 51, "surprise": 43}),
]


def _clips(dataset: str, subjects: int, labels: dict[str, int]) -> list[Clip]:
    """Clips of `labels` dealt round-robin over `subjects` subjects (frames are not read here)."""
    words = [label for label, count in labels.items() for _ in range(count)]
    return [
        Clip(dataset, f"s{k % subjects:02d}", f"c{k:03d}", Path(f"/nowhere/{dataset}/{k}"), 1, 2, label)
        for k, label in enumerate(words)
    ]


def _composite() -> list[Clip]:
    return [clip for spec in PUBLISHED_COPIES for clip in _clips(*spec)]


def test_megc2019_on_copies_like_the_published_ones_matches_the_table():
    selection = select(_composite(), MEGC2019_MAPPING)
    assert selection.classes == ("negative", "positive", "surprise")
    assert len(selection.clips) == 442 and len(set(selection.groups)) == 68
    # 145 + 133 + 164 = 442; negative 88 + 92 + 70 = 250, positive 32 + 26 + 51 = 109, surprise 25 + 15 + 43 = 83
    assert [selection.targets.count(k) for k in range(3)] == [250, 109, 83]
    assert selection.left_out == {("casme2", "others"): 99, ("casme2", "fear"): 2}
    assert count_warnings(selection) == []
    table = count_table(selection).splitlines()
    assert table[1].split() == ["casme2", "145", "88", "32", "25", "24"]
    assert table[2].split() == ["published", "145", "88", "32", "25", "24"]
    assert table[7].split() == ["all", "442", "250", "109", "83", "68"]
    assert table[-1] == "left out (labels outside the classes): casme2 'fear' 2; casme2 'others' 99"


def test_a_copy_that_differs_is_warned_naming_its_rows():
    clips = _composite()
    clips.append(Clip("casme2", "s00", "extra", Path("/nowhere"), 1, 2, "Repression "))  # case and spaces ignored
    warnings = count_warnings(select(clips, MEGC2019_MAPPING))
    assert warnings == [
        "casme2 differs from the published MEGC 2019 counts: clips 146 vs 145, negative 89 vs 88 (yours vs published)",
        "all differs from the published MEGC 2019 counts: clips 443 vs 442, negative 251 vs 250 (yours vs published)",
    ]


def test_only_some_datasets_compare_those_rows_and_not_the_total():
    selection = select(_clips(*PUBLISHED_COPIES[2]), MEGC2019_MAPPING)
    assert count_warnings(selection) == []
    assert "  published" in count_table(selection) and count_table(selection).count("published") == 1


def test_unknown_label_is_an_error_naming_the_clip_in_one_short_line():
    clips = _clips("casme2", 2, {"happiness": 2, "surprise": 1, "disgust": 1}) + _clips("casme2", 1, {"joy": 1})
    deep = Path("/home/someone/datasets/micro-expressions/CASME2/Cropped/Cropped/sub01/EP02_01f_long_folder_name")
    clips[-1] = replace(clips[-1], frames=deep)
    with pytest.raises(UserError, match=r"clip casme2/s00/c000: label 'joy' is not in the class mapping megc2019") as e:
        select(clips, MEGC2019_MAPPING)
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


def test_fewer_than_two_subjects_or_an_empty_class_are_errors():
    with pytest.raises(UserError, match="1 subject"):
        select(_clips("smic", 1, {"negative": 1, "positive": 1, "surprise": 1}), MEGC2019_MAPPING)
    with pytest.raises(UserError, match="class 'surprise' has no clip"):
        select(_clips("smic", 2, {"negative": 2, "positive": 2}), MEGC2019_MAPPING)


def test_the_users_mapping(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("dataset,label,class\ncasme2,happiness,pos\n*,disgust,neg\ncasme2,others,\nsamm,Anger,neg\n")
    mapping = class_mapping(path)
    assert mapping.classes == ("pos", "neg")
    clips = _clips("casme2", 2, {"happiness": 2, "disgust": 1, "others": 3}) + _clips("samm", 1, {"anger": 1})
    selection = select(clips, mapping)
    assert [clip.label for clip in selection.clips] == ["happiness", "happiness", "disgust", "anger"]
    assert selection.targets == [0, 0, 1, 1] and selection.left_out == {("casme2", "others"): 3}
    assert count_warnings(selection) == [] and "published" not in count_table(selection)
    path.write_text("dataset,label,class\ncasme2,happiness,pos\ncasme2,Happiness,neg\n")
    with pytest.raises(UserError, match=r"classes.csv line 3: casme2,Happiness again \(line 2\)"):
        class_mapping(path)


def test_a_frozen_clip_list_reproduces_a_split_exactly(tmp_path):
    clips = _clips("smic", 3, {"negative": 2, "positive": 2, "surprise": 2})
    path = tmp_path / "split.csv"
    path.write_text("dataset,subject,clip\nsmic,s02,c005\nsmic,s00,c000\nsmic,s02,c002\nsmic,s00,c003\n")
    selection = select(clips, MEGC2019_MAPPING, clip_list=path)
    assert [clip.clip for clip in selection.clips] == ["c005", "c000", "c002", "c003"]
    assert selection.targets == [2, 0, 1, 1]
    path.write_text("dataset,subject,clip\nsmic,s00,c000\nsmic,s01,c000\n")
    with pytest.raises(UserError, match=r"split.csv line 3: clip smic/s01/c000 is not in the datasets read"):
        select(clips, MEGC2019_MAPPING, clip_list=path)
    path.write_text("dataset,subject,clip\nsmic,s00,c000\nsmic,s00,c000\n")
    with pytest.raises(UserError, match=r"line 3: smic/s00/c000 again \(line 2\)"):
        select(clips, MEGC2019_MAPPING, clip_list=path)


def test_groupings_composite_and_per_dataset():
    selection = select(_composite(), MEGC2019_MAPPING)
    assert groupings(selection, "megc2019") == [("composite", list(range(442)))]
    runs = groupings(selection, "per-dataset")
    assert [(name, len(indices)) for name, indices in runs] == [("casme2", 145), ("samm", 133), ("smic", 164)]
    assert all(selection.clips[i].dataset == name for name, indices in runs for i in indices)
    one = select(
        _clips("smic", 2, {"negative": 2, "positive": 1, "surprise": 1}) + _clips("samm", 1, {"Anger": 1}),
        MEGC2019_MAPPING,
    )
    with pytest.raises(UserError, match="dataset samm has under 2 subjects"):
        groupings(one, "per-dataset")
