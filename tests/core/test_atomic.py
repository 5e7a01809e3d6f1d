"""Atomic writes (core.atomic): text, torch.save and figures all go through ``write_atomic``."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from gmpq_ray.core.atomic import save_torch_atomic, write_atomic, write_text_atomic
from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.models.pretrained import load_torch_file


def test_text_and_torch_files_are_written_whole_with_the_usual_mode(tmp_path):
    write_text_atomic(tmp_path / "sub" / "a.txt", "hello\n")  # the folder is made
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello\n"
    save_torch_atomic({"w": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(load_torch_file(tmp_path / "t.pt", str)["w"], torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "t.pt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t.pt"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "kept.txt"
    write_text_atomic(path, "old")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, failing)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_a_figure_goes_through_the_same_writer(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    write_atomic(tmp_path / "f.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unreadable_file_is_a_user_input_error_in_the_callers_words(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserInputError, match=r"^bad\.pt is broken \(UnpicklingError\)$"):
        load_torch_file(tmp_path / "bad.pt", lambda err: f"bad.pt is broken ({type(err).__name__})")
