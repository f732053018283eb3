"""nnU-Net raw input files (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...) grouped by case for prediction."""

from __future__ import annotations

from pathlib import Path

import pytest

from mambaseg.data.files import DatasetError, channel_file, group_channel_files


def _files(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return sorted(folder / n for n in names)


def test_channel_file_names() -> None:
    assert channel_file("imagesTs/la_003_0001.nii.gz") == ("la_003", 1)
    assert channel_file("p001_frame01_0000.h5") == ("p001_frame01", 0)
    assert channel_file("case.nii.gz") is None and channel_file("case_001.nii.gz") is None
    assert channel_file("_0000.nii.gz") is None  # no case name


def test_grouped_by_case_in_channel_order(tmp_path: Path) -> None:
    files = _files(tmp_path, "b_0001.nii.gz", "a_0000.nii.gz", "b_0000.nii.gz", "a_0001.nii.gz")
    assert group_channel_files(files[::-1], 2) == [[tmp_path / "a_0000.nii.gz", tmp_path / "a_0001.nii.gz"],
                                                   [tmp_path / "b_0000.nii.gz", tmp_path / "b_0001.nii.gz"]]


def test_grouping_errors_name_the_case_and_the_channel(tmp_path: Path) -> None:
    files = _files(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "c_0001.nii.gz")
    with pytest.raises(DatasetError, match=r"case 'b': channel 1 is missing \(.*b_0001\.nii\.gz not found"):
        group_channel_files(files, 2)
    with pytest.raises(DatasetError, match=r"case 'c': channel 0 is missing"):
        group_channel_files([f for f in files if not f.name.startswith("b")], 2)
    with pytest.raises(DatasetError, match=r"a_0002\.nii\.gz: channel 2 of case 'a', but the model takes 2 channels"):
        group_channel_files(files[:2] + [tmp_path / "a_0002.nii.gz"], 2)
    with pytest.raises(DatasetError, match=r"a_0000\.nii\.gz and .*a_0000\.nii are both channel 0 of case 'a'"):
        group_channel_files([files[0], tmp_path / "a_0000.nii"], 2)
    with pytest.raises(DatasetError, match=r"scan\.nii\.gz: not an nnU-Net channel file.*<case>_0000 \.\.\. "
                                           r"<case>_0001"):
        group_channel_files([tmp_path / "scan.nii.gz"], 2)
