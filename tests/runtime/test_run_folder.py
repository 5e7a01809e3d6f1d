"""Run folders: what --overwrite may replace, the lock, rollback, file modes (no Ray)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gmpq_ray.core.errors import UserInputError
from gmpq_ray.core.policy import write_text_atomic
from gmpq_ray.runtime import LOCK_FILE, MARKER_FILE, RunFolder, check_new_output, study_url


def make_run(folder: Path, kind: str = "search") -> Path:
    with RunFolder.create(folder, kind, overwrite=False):
        (folder / "best_policy.json").write_text("{}")
    return folder


def test_a_new_folder_is_created_marked_and_locked(tmp_path):
    out = check_new_output(tmp_path / "run", "search", overwrite=False)
    with RunFolder.create(out, "search", overwrite=False):
        marker = json.loads((out / MARKER_FILE).read_text())
        assert marker["kind"] == "search" and marker["pid"] == os.getpid()
        with pytest.raises(UserInputError, match=f"in use by a running gmpq \\(pid {os.getpid()}"):
            check_new_output(out, "search", overwrite=True)
        with pytest.raises(UserInputError, match="in use by a running gmpq"):
            RunFolder.reopen(out, "search")
    # Released: the same folder can be resumed (and overwritten) again.
    RunFolder.reopen(out, "search").release()
    assert check_new_output(out, "search", overwrite=True) == out


@pytest.mark.parametrize("output", ["", "   "])
def test_an_empty_output_path_is_refused(tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserInputError, match="the path is empty"):
        check_new_output(output, "search", overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_current_folder_its_parents_and_home_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "proj" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(UserInputError, match="current folder or one of its parents"):
            check_new_output(output, "search", overwrite=True)
    with pytest.raises(UserInputError, match="home folder"):
        check_new_output(Path.home(), "search", overwrite=True)


def test_a_folder_holding_an_input_is_refused(tmp_path):
    jobs = tmp_path / "proj" / "jobs"
    jobs.mkdir(parents=True)
    job = jobs / "my_job.yaml"
    job.write_text("name: x\n")
    for output in (jobs, tmp_path / "proj"):
        with pytest.raises(UserInputError, match="which this run reads"):
            check_new_output(output, "search", overwrite=True, inputs=[job, None])
    assert job.read_text() == "name: x\n"


def test_overwrite_replaces_only_gmpq_folders_of_the_same_kind(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "thesis.tex").write_text("years of work")
    with pytest.raises(UserInputError, match="not made by gmpq"):
        check_new_output(own, "search", overwrite=True)
    search_run = make_run(tmp_path / "search_run", "search")
    with pytest.raises(UserInputError, match="holds a gmpq search run, not a finetune run"):
        check_new_output(search_run, "finetune", overwrite=True)
    with pytest.raises(UserInputError, match="already holds results"):
        check_new_output(search_run, "search", overwrite=False)
    assert (own / "thesis.tex").read_text() == "years of work"
    assert (search_run / "best_policy.json").is_file()

    out = check_new_output(search_run, "search", overwrite=True)
    with RunFolder.create(out, "search", overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, MARKER_FILE])


def test_create_checks_again_under_the_lock(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    check_new_output(out, "search", overwrite=True)  # empty: allowed
    (out / "appeared.txt").write_text("someone else's")  # ... and then filled by another process
    with pytest.raises(UserInputError, match="not a gmpq search run folder"):
        RunFolder.create(out, "search", overwrite=True)
    assert (out / "appeared.txt").read_text() == "someone else's"


def test_rollback_removes_a_new_folder_and_empties_one_that_was_empty(tmp_path):
    fresh = RunFolder.create(tmp_path / "fresh", "search", overwrite=False)
    (fresh.path / "job.yaml").write_text("x")
    fresh.rollback()
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "empty").mkdir()
    was_empty = RunFolder.create(tmp_path / "empty", "search", overwrite=False)
    (was_empty.path / "job.yaml").write_text("x")
    was_empty.rollback()
    assert list((tmp_path / "empty").iterdir()) == []


def test_the_lock_of_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from gmpq_ray.runtime import RunFolder
        RunFolder.create(Path({str(out)!r}), "search", overwrite=False)
        os._exit(0)  # dies holding the lock, as a killed run would
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] != os.getpid()
    RunFolder.reopen(out, "search").release()


def test_results_are_written_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        os.umask(0o027)
        write_text_atomic(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640


def test_study_url_keeps_odd_characters_in_the_path(tmp_path):
    import optuna

    folder = tmp_path / "a?b#c%d"
    folder.mkdir()
    optuna.create_study(study_name="s", storage=study_url(folder / "study.db"))
    assert (folder / "study.db").is_file()
    assert optuna.get_all_study_names(study_url(folder / "study.db")) == ["s"]
