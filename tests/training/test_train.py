"""Training: a few steps of every stage, bit-exact resume, a 2-process gloo run, and bad-input messages."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from export3d.data import ClipFormatError, SyntheticConfig, export_synthetic
from export3d.train import parse_args
from export3d.training.config import TrainConfig
from export3d.training.loop import main
from export3d.utils.checkpoint import CheckpointError, load_checkpoint


def _cfg(out, **overrides) -> TrainConfig:
    base = dict(out=str(out), clebs_steps=2, rec_steps=2, adv_steps=2, batch_size=2, clebs_clips=2, clebs_negatives=3,
                train_identities=3, test_identities=2, clips_per_identity=1, frames_per_clip=6, eval_pairs=4,
                log_every=1, sample_every=2, ckpt_every=1, r1_every=1, device="cpu", deterministic=True)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def _states(result):
    modules = (("model", result.model), ("discriminator", result.discriminator), ("model_ema", result.model_ema))
    return {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in modules}


def test_every_stage_writes_all_outputs(tmp_path):
    result = main(_cfg(tmp_path / "run", lpips_every=2))
    out = tmp_path / "run"
    assert json.loads((out / "config.json").read_text())["rec_steps"] == 2
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"clebs", "reconstruction", "adversarial"}
    generator_steps = [r for r in records if r["stage"] != "clebs"]  # global steps 3..6 = stage steps 1, 2, 1, 2
    # the random-VGG fallback (no VGG16 weights here) is logged under a name that says so
    assert [("lpips_random_vgg" in r, "lpips_random_vgg_raw" in r) for r in generator_steps] == \
        [(False, False), (True, True)] * 2
    assert not any("lpips" in r for r in generator_steps)
    assert all("mse" in r and "mse_raw" in r for r in generator_steps)
    for r in records:
        values = [v for k, v in r.items() if k not in ("step", "stage", "time")]
        assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in values), r
    adv = [r for r in records if r["stage"] == "adversarial"]
    assert all("g_adv" in r and "d_loss" in r and "r1" in r for r in adv)
    assert (out / "samples" / "latest.png").is_file() and (out / "samples" / "reconstruction_000002.png").is_file()
    assert any((out / "tensorboard").iterdir())
    weights, state, folder = load_checkpoint(out)
    assert state["step"] == 6 and state["stage"] == "adversarial"
    assert set(weights) == {"model", "clebs", "discriminator", "model_ema"}
    ema, trained = weights["model_ema"], weights["model"]
    lagging = {k for k in ema if not torch.equal(ema[k], trained[k])}  # the average trails the trained weights ...
    assert lagging and all(k.startswith(("generator.", "renderer.", "superres.")) for k in lagging), lagging
    assert "generator.triplane_ema" not in lagging  # ... but copies buffers, and the frozen f_e (lebs.*)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weights"] == "model_ema"
    for setting in ("same_identity", "cross_identity"):
        for who in ("model", "copy_source"):
            assert all(torch.isfinite(torch.tensor(v)) for v in metrics[setting][who].values())
    assert metrics["lpips_network"]["pretrained"] is False
    assert result.model.lebs.frozen, "f_e is frozen after the CLeBS stage"
    pretrained = {k.removeprefix("lebs."): v for k, v in weights["clebs"].items() if k.startswith("lebs.")}
    torch.testing.assert_close(dict(result.model.lebs.state_dict()), pretrained)  # f_e came from CLeBS


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = _states(main(_cfg(tmp_path / "full", eval_pairs=0)))
    main(_cfg(tmp_path / "split", eval_pairs=0, stop_after=3))  # stops inside the reconstruction stage
    _, state, _ = load_checkpoint(tmp_path / "split")
    assert state["step"] == 3 and state["stage"] == "reconstruction"
    resumed = _states(main(_cfg(tmp_path / "split", eval_pairs=0, resume=str(tmp_path / "split"))))
    for name in full:
        for key in full[name]:
            assert torch.equal(full[name][key], resumed[name][key]), f"{name}.{key} differs after resume"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    result = main(_cfg(out, eval_pairs=0, clebs_steps=1, rec_steps=1, adv_steps=2, deterministic=False))
    torch.save(_states(result), os.path.join(result_dir, f"rank{rank}.pt"))


def test_two_process_gloo_keeps_ranks_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in r0:
        for key in r0[name]:
            assert torch.equal(r0[name][key], r1[name][key]), f"{name}.{key} differs between ranks"
    assert (tmp_path / "ddp" / "checkpoints" / "last.json").is_file()


def test_bad_inputs_fail_fast_with_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        TrainConfig(preset="huge")
    with pytest.raises(FileNotFoundError, match="--data: .* is not a folder"):
        main(_cfg(tmp_path / "a", data=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipFormatError, match="manifest.json"):
        main(_cfg(tmp_path / "b", data=str(tmp_path / "empty")))
    small = SyntheticConfig(resolution=32, train_identities=2, test_identities=1, clips_per_identity=1,
                            frames_per_clip=4)  # fmt: skip
    export_synthetic(small, tmp_path / "clips32", splits=("train",))
    with pytest.raises((ValueError, ClipFormatError), match="32"):
        main(_cfg(tmp_path / "c", data=str(tmp_path / "clips32")))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a run"):
        main(_cfg(tmp_path / "taken"))
    with pytest.raises(CheckpointError, match="does not exist"):
        main(_cfg(tmp_path / "d", resume=str(tmp_path / "nothing-here")))


def test_cli_defaults_and_errors(capsys):
    cfg = parse_args([])
    assert cfg.preset == "tiny" and cfg.data == ("synthetic",) and cfg.out.startswith("runs/tiny-")
    cfg = parse_args(["--rec-steps", "5", "--resume", "runs/x"])
    assert cfg.rec_steps == 5 and cfg.out == "runs/x"
    with pytest.raises(SystemExit):
        parse_args(["--preset", "huge"])
    with pytest.raises(SystemExit):
        parse_args(["--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # issue 13 #6: a traceback before
        parse_args(["--threads", "0"])
    assert "--threads must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--impl", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_help_shows_the_presets_values(capsys):
    """Issue 13 #7: --help said "(default: preset's rec_steps)" and listed no choices."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "preset's" not in text
    assert "(paper: 300000; tiny: 1750)" in text and "{reference,fast}" in text and "{clebs,lebs,direct}" in text
    assert "bf16 autocast" in text and "use_deterministic_algorithms" in text and "torch.compile" in text
