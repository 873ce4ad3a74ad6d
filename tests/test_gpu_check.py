"""The GPU check's CPU dry run: every check runs with tiny sizes, CUDA-only ones say why not."""

from __future__ import annotations

import json

import pytest
import torch

from dlbook import gpu_check


def test_dry_run_runs_every_check_and_writes_json(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    # No sections: running a chapter takes longer than this test may (see the next test).
    assert gpu_check.main(["--dry-run", "--sections", "--out", str(out)]) == 0
    rows = {row["check"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["bf16 autocast vs fp32"]["status"] == "pass"
    assert rows["bf16 autocast vs fp32"]["data"]["progress"] >= 0.9
    assert rows["flash attention parity"] == {
        **rows["flash attention parity"],
        "status": "skipped",
        "detail": "skipped: no CUDA (FlashAttention is a CUDA kernel)",
    }
    compiled = rows["torch.compile (eager)"]
    assert compiled["status"] == "pass" and compiled["data"]["max_abs_diff"] < 1e-4
    bench = rows["bench gpt tiny"]
    assert bench["status"] == "pass" and bench["data"]["tokens_per_second"] > 0
    table = capsys.readouterr().out
    assert "skipped: no CUDA" in table and table.count("\n") >= 2 + len(rows)


def test_a_failing_section_is_a_failed_row():
    (row,) = gpu_check.check_sections(["9.9"], "smoke", timeout=120)
    assert (row.check, row.status, row.value) == ("run 9.9 (smoke)", "fail", "exit 2")
    assert "9.9" in row.detail  # the CLI's one-line reason is carried into the table


def test_any_failed_check_makes_the_exit_status_1(monkeypatch, capsys):
    rows = [gpu_check.Row("a", "pass"), gpu_check.Row("b", "fail", "x", "why")]
    monkeypatch.setattr(gpu_check, "run_checks", lambda **kw: rows)
    assert gpu_check.main(["--dry-run"]) == 1
    rows[1] = gpu_check.Row("b", "skipped")
    assert gpu_check.main(["--dry-run"]) == 0
    capsys.readouterr()


def test_a_crashing_check_is_an_error_row_not_a_crash():
    def boom() -> gpu_check.Row:
        raise RuntimeError("out of memory\nmore lines")

    row = gpu_check._timed("x", boom)
    assert (row.status, row.detail) == ("error", "RuntimeError: out of memory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_a_real_run_refuses_in_one_line(capsys):
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dry-run" in err


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--section-timeout", "0"]) == 2
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "no" / "x.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 2
