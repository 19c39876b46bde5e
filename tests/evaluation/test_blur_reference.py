"""The blurred-driving-frame ruler: the blur, its scores on evaluate's pairs, its memorisation share, its CLI."""

from __future__ import annotations

import pytest
import torch

from export3d.data.source import ClipInfo
from export3d.evaluation import blur_reference as br
from export3d.evaluation.memorisation import Memorisation, identity_bank
from export3d.evaluation.metrics import build_lpips
from tests.evaluation.test_memorisation import ColourClips, ColourExtractor

SIZE = 32


class TexturedClips:
    """Two identities, one clip each; every frame is its identity's colour plus fine seeded noise."""

    resolution, expression_dim = SIZE, 52

    def __init__(self):
        self.clips = [ClipInfo("a/0", 0, 3, "test"), ClipInfo("b/0", 1, 3, "test")]

    def load(self, requests):
        out = []
        for clip, frames in requests:
            base = torch.tensor([(0.6, -0.4, -0.4), (-0.4, 0.6, -0.4)][self.clips[clip].identity]).view(3, 1, 1)
            images = []
            for f in frames:
                g = torch.Generator().manual_seed(10 * clip + f)
                images.append((base + 0.3 * torch.randn(3, SIZE, SIZE, generator=g)).clamp(-1, 1))
            n = len(frames)
            out.append({"image": torch.stack(images), "beta": torch.zeros(n, 52), "camera": torch.zeros(n, 25)})
        return out


def test_blur_keeps_only_detail_coarser_than_the_factor():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert br.blur(x, 1) is x
    checker = (torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2 * 2.0 - 1  # [16, 16] of +-1
    torch.testing.assert_close(br.blur(checker.expand(1, 3, 16, 16), 2), torch.zeros(1, 3, 16, 16))
    flat = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(br.blur(flat, 4), flat)
    assert br.blur(x, 4).shape == x.shape
    with pytest.raises(ValueError, match="blur factor must be >= 1"):
        br.blur(x, 0)


def test_scores_fall_with_the_blur_and_the_share_reads_the_blurred_frames():
    lpips_model, info = build_lpips()
    bank = identity_bank([("train", ColourClips())], ColourExtractor(), frames=2)
    memo = Memorisation(ColourExtractor(), bank)
    rows = br.blur_reference(TexturedClips(), lpips_model, factors=(1, 2, 4), pairs=6, batch_size=4, memo=memo)
    assert list(rows) == ["1", "2", "4"]
    assert rows["1"]["psnr"] == pytest.approx(120.0)  # the frame itself: no error (PSNR's floor on the MSE)
    assert rows["1"]["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert rows["1"][info.metric_name] == pytest.approx(0, abs=1e-6)
    assert rows["1"]["psnr"] > rows["2"]["psnr"] > rows["4"]["psnr"]
    assert rows["2"]["ssim"] > rows["4"]["ssim"]
    assert rows["2"][info.metric_name] < rows["4"][info.metric_name]
    for k in ("1", "2", "4"):  # mean-colour descriptors: a blur keeps the colour, so each frame stays its source's
        m = rows[k]["memorisation"]
        assert rows[k]["pairs"] == 6 and m["pairs"] == 6 and m["scored"] == 6
        assert m["follows_source"] == 1.0


def test_the_command_line_checks_its_flags(capsys):
    with pytest.raises(SystemExit):
        br.main(["--checkpoint", "x", "--factors", "2,0"])
    assert "every factor must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        br.main(["--checkpoint", "x", "--pairs", "0"])
    assert "--pairs must be >= 1" in capsys.readouterr().err


def test_a_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    assert br.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
