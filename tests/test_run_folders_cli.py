"""``--output``/``--overwrite``/``--resume`` through the ``gmpq`` command: refused cases leave
every file as it was, end in one line and exit 2 (the checks run before Ray starts)."""

from __future__ import annotations

import optuna
import pytest

from gmpq_ray.cli import main
from gmpq_ray.runtime import RunFolder, study_url
from tests.conftest import write_job
from tests.finetune.finetune_helpers import make_image_folder, mixed_policy, save_fp_weights, write_finetune_job


def refused(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gmpq: error:") and expected in err[0], err


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unset_variable_as_output_never_empties_the_current_folder(tmp_path, monkeypatch, capsys):
    job = write_job(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    refused(capsys, ["search", str(job), "--output", "", "--overwrite"], "--output: the path is empty")
    refused(capsys, ["search", str(job), "--output", ".", "--overwrite"], "is the current folder or one of its parents")
    assert snapshot(tmp_path) == before


def test_the_folder_of_the_job_file_is_never_the_output(tmp_path, capsys):
    jobs = tmp_path / "proj" / "jobs"
    jobs.mkdir(parents=True)
    job = write_job(jobs)
    (jobs / "other_job.yaml").write_text("name: sibling\n")
    before = snapshot(tmp_path)
    refused(capsys, ["search", str(job), "--output", str(jobs), "--overwrite"], "which this run reads")
    refused(capsys, ["search", str(job), "--output", str(tmp_path / "proj"), "--overwrite"], "which this run reads")
    assert snapshot(tmp_path) == before


def test_overwrite_leaves_a_users_own_folder_alone(tmp_path, capsys):
    job = write_job(tmp_path)
    mine = tmp_path / "results_2025"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    refused(capsys, ["search", str(job), "--output", str(mine), "--overwrite"], "was not made by gmpq")
    assert (mine / "notes.md").read_text() == "mine"


def test_a_finetune_cannot_overwrite_the_search_run_it_reads(tmp_path, capsys):
    search_run = tmp_path / "search_run"
    with RunFolder.create(search_run, "search", overwrite=False):
        fp = save_fp_weights(search_run / "teacher.pt")
        mixed_policy().save(search_run / "best_policy.json")
    job = write_finetune_job(tmp_path, make_image_folder(tmp_path / "data"), fp)
    before = snapshot(search_run)
    refused(capsys, ["finetune", str(search_run / "best_policy.json"), str(job), "--output", str(search_run), "--overwrite"],
            "which this run reads")
    other = tmp_path / "other_search"
    with RunFolder.create(other, "search", overwrite=False):
        (other / "best_policy.json").write_text("{}")
    refused(capsys, ["finetune", str(search_run / "best_policy.json"), str(job), "--output", str(other), "--overwrite"],
            "holds a gmpq search run, not a finetune run")
    assert snapshot(search_run) == before and (other / "best_policy.json").read_text() == "{}"


def test_resume_after_renaming_the_job_names_the_field(tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder.create(out, "search", overwrite=False):
        pass
    write_job(out)  # out/job.yaml, name: tiny
    optuna.create_study(study_name="tiny", storage=study_url(out / "study.db"))
    (out / "job.yaml").write_text((out / "job.yaml").read_text().replace("name: tiny", "name: renamed"))
    refused(capsys, ["search", "--resume", str(out)], "name: 'renamed' is not the study in study.db ('tiny')")


@pytest.mark.ray
def test_a_run_that_fails_before_its_trials_leaves_no_folder(tmp_path, monkeypatch, ray_local):
    import gmpq_ray.search.runner as runner

    def failing_teacher(*args, **kwargs):
        raise RuntimeError("out of memory while training the teacher")

    monkeypatch.setattr(runner, "train_teacher", failing_teacher)
    job = write_job(tmp_path)
    with pytest.raises(RuntimeError, match="out of memory"):
        runner.run_search(job, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()
    # ... so the corrected run into the same folder is not refused.
    monkeypatch.undo()
    with RunFolder.create(tmp_path / "run", "search", overwrite=False):
        pass
