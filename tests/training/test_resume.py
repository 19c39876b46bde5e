"""Resume restores the run's settings, refuses unsafe changes without writing, and training stops on divergence
(issue 13 #1, #2, #4)."""

import json
import time

import pytest

from export3d.train import cli, parse_args
from export3d.training.loop import main
from export3d.training.runs import TrainingDiverged, write_config
from export3d.utils.checkpoint import load_checkpoint
from tests.training.test_train import _cfg

SMALL = ["--clebs-steps", "1", "--rec-steps", "2", "--adv-steps", "1", "--batch-size", "2", "--clebs-clips", "2",
         "--clebs-negatives", "3", "--train-identities", "3", "--test-identities", "2", "--clips-per-identity", "1",
         "--frames-per-clip", "6", "--eval-pairs", "0", "--ckpt-every", "1", "--device", "cpu"]  # fmt: skip


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _steps(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_uses_the_runs_settings_and_refuses_unsafe_changes(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["--out", str(run), "--stop-after", "2", "--seed", "3", *SMALL]) == 0
    before = _snapshot(run)
    for flags, named in ((["--rec-steps", "7"], "--rec-steps"), (["--preset", "paper"], "--preset"),
                         (["--lr", "0.5"], "--lr"), (["--data", str(tmp_path)], "--data"),
                         (["--adv-steps", "0"], "--adv-steps")):  # fmt: skip
        assert cli(["--resume", str(run), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert f"error: {named}:" in err and "was trained with" in err, err
        assert _snapshot(run) == before, f"{flags} changed the run folder"
    cfg = parse_args(["--resume", str(run)])  # the README's `--resume RUN`: no preset or step flags repeated
    assert (cfg.rec_steps, cfg.seed, cfg.clebs_clips, cfg.stop_after, cfg.out) == (2, 3, 2, None, str(run))
    step = next((run / "checkpoints").glob("step_00000002*"))
    assert parse_args(["--resume", str(step)]).out == str(run)  # one checkpoint of the run: it continues in RUN
    assert cli(["--resume", str(run), "--log-every", "1", "--adv-steps", "2"]) == 0  # safe: logging, a longer stage
    _, state, _ = load_checkpoint(run)
    assert (state["step"], state["stage"], state["stage_step"]) == (5, "adversarial", 2)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["rec_steps"], saved["seed"], saved["adv_steps"], saved["log_every"]) == (2, 3, 2, 1)


def test_a_failed_resume_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert cli(["--resume", str(missing)]) == 2
    assert not missing.exists() and "does not exist" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    assert cli(["--resume", str(other)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]
    assert cli(["--out", str(other), *SMALL]) == 2  # a new run never writes into a folder that holds other files
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in other.iterdir()) == ["todo.txt"]


def test_a_run_killed_before_its_first_checkpoint_restarts_and_logs_are_cut_to_the_resumed_step(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(run, clebs_steps=1, rec_steps=2, adv_steps=1, eval_pairs=0)
    write_config(run, cfg)  # what a kill during the first steps leaves: settings, a log, no checkpoint
    (run / "log.jsonl").write_text('{"step": 1, "stage": "clebs"}\n{"step": 2, "sta')
    with pytest.raises(FileExistsError, match="already holds a run"):
        main(cfg)
    main(_cfg(run, clebs_steps=1, rec_steps=2, adv_steps=1, eval_pairs=0, resume=str(run), stop_after=2))
    assert _steps(run) == [1, 2]
    with open(run / "log.jsonl", "a") as f:  # a kill after logging steps 3 and 4 but before their checkpoint
        f.write('{"step": 3, "stage": "reconstruction"}\n{"step": 4, "stage": "reconstruction"}\n')
    main(_cfg(run, clebs_steps=1, rec_steps=2, adv_steps=1, eval_pairs=0, resume=str(run)))
    assert _steps(run) == [1, 2, 3, 4], "each step logged once"


def test_stage_ends_are_saved_once_and_tensorboard_forgets_the_steps_after_a_resumed_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    # steps: 1 = the CLeBS stage's end, 2-3 = reconstruction (3 is its end and --stop-after), 4 = adversarial
    assert cli(["--out", str(run), "--stop-after", "3", "--log-every", "1", *SMALL]) == 0
    saved = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert saved == ["step_00000001", "step_00000002", "step_00000003"], "a stage end saved twice leaves step_X.r1"
    assert cli(["--resume", str(run / "checkpoints" / "step_00000001")]) == 0  # steps 2 and 3 again, then 4
    assert _steps(run) == [1, 2, 3, 4]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["reconstruction/loss"] == [2, 3] and steps["adversarial/loss"] == [4], steps
    assert all(len(s) == len(set(s)) for s in steps.values()), f"a step logged twice in TensorBoard: {steps}"

def _finite(run):
    weights, _, folder = load_checkpoint(run)
    return folder, all(v.isfinite().all() for module in weights.values() for v in module.values()
                       if v.is_floating_point())  # fmt: skip


def test_divergence_stops_with_an_error_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    run = tmp_path / "lr100"
    assert cli(["--out", str(run), "--lr", "100", *SMALL, "--rec-steps", "6"]) == 3  # issue 13 #4: exited 0
    err = capsys.readouterr().err
    assert "training diverged" in err and "last finite checkpoint" in err
    folder, finite = _finite(run)
    assert finite and folder.name in err
    assert not (run / "metrics.json").exists()
    with pytest.raises(TrainingDiverged, match=r"adversarial step 1\): loss = nan"):
        main(_cfg(tmp_path / "nan", clebs_steps=1, rec_steps=1, adv_steps=2, eval_pairs=0, adv_weight=float("nan")))
    folder, finite = _finite(tmp_path / "nan")
    assert finite
    steps = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("step_*"))
    assert steps[-1].startswith("step_00000002"), steps  # the good ones are kept, the NaN step is not saved


def test_non_finite_metrics_are_written_as_null_and_listed():
    from export3d.training.runs import finite_metrics

    clean, bad = finite_metrics({"same_identity": {"model": {"psnr": float("nan"), "ssim": 0.5}}, "step": 3,
                                 "cross_identity": {"model": {"lpips": float("inf")}}})  # fmt: skip
    assert clean["same_identity"]["model"] == {"psnr": None, "ssim": 0.5} and clean["step"] == 3
    assert bad == ["same_identity.model.psnr", "cross_identity.model.lpips"]
    json.dumps(clean, allow_nan=False)


def test_sigkill_during_training_then_resume_finishes_the_run(tmp_path):
    """A real kill -9 while the run saves checkpoints (every step); --resume completes it, logging each step once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "export3d.train", "--out", str(run), "--threads", "1",
                             "--log-every", "1", *SMALL], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while proc.poll() is None and not list((run / "checkpoints").glob("step_*")):
            time.sleep(0.05)  # waiting for the first checkpoint folder (or its temporary one) to appear
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert cli(["--resume", str(run), "--threads", "1"]) == 0
    _, state, _ = load_checkpoint(run)
    assert (state["step"], state["stage"]) == (4, "adversarial")
    assert _steps(run) == [1, 2, 3, 4]
    assert not list((run / "checkpoints").glob("*.tmp-*"))


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    """SIGTERM (a scheduler's pre-emption) is handled like Ctrl-C: a checkpoint of the current step, then exit."""
    import os
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    flags = [*SMALL, "--rec-steps", "400"]  # the last --rec-steps wins: long enough to be running when signalled
    proc = subprocess.Popen([sys.executable, "-m", "export3d.train", "--out", str(run), "--threads", "1",
                             "--log-every", "1", *flags], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ((run / "log.jsonl").is_file() and len(_steps(run)) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, "training never reached step 5"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): writing a checkpoint" in err
    _, state, _ = load_checkpoint(run)
    assert 5 <= state["step"] < 404 and state["stage"] == "reconstruction"
