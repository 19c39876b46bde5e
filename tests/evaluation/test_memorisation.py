"""The memorisation measure (issue 28): outputs nearer the source's face descriptor than any training identity's
follow the source; faceless outputs and sources are counted, not scored; the grid shows the nearest training face."""

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export3d.data.source import ClipInfo
from export3d.evaluation.memorisation import Memorisation, MemorisationProbe, identity_bank, memorisation_grid
from export3d.evaluation.scoring import EvalBatch, format_memorisation

COLOURS = {0: (0.8, -0.5, -0.5), 1: (-0.5, 0.8, -0.5), 2: (-0.5, -0.5, 0.8)}  # one colour per training identity


class ColourExtractor:
    """A stand-in face model: the descriptor is an image's mean colour (padded to 128); no face in dark images."""

    def __call__(self, images, descriptor=False):
        out = []
        for x in images:
            mean = x.float().mean(dim=(1, 2))
            desc = np.concatenate([mean.double().numpy(), np.zeros(125)]) if descriptor else None
            out.append(None if mean.mean() < -0.9 else SimpleNamespace(descriptor=desc))
        return out

    def close(self):
        pass


class ColourClips:
    """A ClipSource whose identity k's frames are flat COLOURS[k] images (identity 2 also has a dark frame)."""

    resolution, expression_dim = 8, 52

    def __init__(self):
        self.clips = [ClipInfo("a/0", 0, 3, "train"), ClipInfo("b/0", 1, 2, "train"), ClipInfo("b/1", 1, 2, "train"),
                      ClipInfo("c/0", 2, 4, "train")]  # fmt: skip

    def load(self, requests):
        out = []
        for clip, frames in requests:
            identity = self.clips[clip].identity
            images = torch.tensor(COLOURS[identity]).view(1, 3, 1, 1).expand(len(frames), 3, 8, 8).clone()
            if identity == 2:
                images[[i for i, f in enumerate(frames) if f == 0]] = -1.0
            out.append({"image": images, "beta": torch.zeros(len(frames), 52), "camera": torch.zeros(len(frames), 25)})
        return out


def _flat(colour, n=1):
    return torch.tensor(colour).view(1, 3, 1, 1).expand(n, 3, 8, 8).clone()


def test_outputs_follow_the_source_or_the_nearest_training_identity(tmp_path):
    bank = identity_bank([("train", ColourClips())], ColourExtractor(), frames=4)
    assert bank.names == ["train:a/0", "train:b/0", "train:c/0"] and bank.without_face == 0
    np.testing.assert_allclose(bank.descriptors[2][:3], COLOURS[2])  # the dark frame is left out of the mean
    probe = MemorisationProbe(ColourExtractor(), bank)
    grey = (0.1, 0.1, 0.1)
    source = torch.cat([_flat(grey), _flat(grey), _flat((0.2, 0.0, 0.0)), -torch.ones(1, 3, 8, 8)])
    output = torch.cat([_flat((0.15, 0.1, 0.05)),  # nearer its source than any training colour: follows the source
                        _flat(COLOURS[1]),  # a training identity's colour: memorised
                        -torch.ones(1, 3, 8, 8),  # no face in the output
                        _flat(grey)])  # no face in the source
    batch = EvalBatch(source, source.clone(), torch.zeros(4, 52), torch.zeros(4, 25), source.clone())
    probe.update("same_identity", batch, {"model": output, "copy_source": source})
    probe.update("cross_identity", batch, {"model": output, "copy_source": source})  # ignored: no identity to keep
    result = probe.result()
    assert (result["pairs"], result["scored"], result["follow"]) == (4, 2, 1)
    assert (result["no_face_output"], result["no_face_source"]) == (1, 1)
    assert result["follows_source"] == 0.5 and result["driving_follows_source"] == 1.0
    assert result["nearest_training"] == {"train:a/0": 1, "train:b/0": 1}
    line = format_memorisation(result)
    assert "1/2 outputs nearer the source than any of 3 training identities (0.500" in line and "1 outputs" in line
    grid = memorisation_grid(probe, tmp_path / "grid.png")
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size[1] == 14 + 4 * (8 + 12 + 2) + 2  # a header, then 4 rows with captions
    assert [r["note"][0] for r in probe.rows[:2]] == ["S", "T"] and probe.rows[2]["note"] == "no face in the output"


def test_without_face_tools_or_faces_the_measure_says_why():
    memo = Memorisation(reason="the faces extra is not installed")
    assert memo.hook("clips") is None
    assert memo.result("clips") == {"not_run": "the faces extra is not installed"}
    assert format_memorisation(memo.result("clips")) == "Memorisation: not run: the faces extra is not installed"

    class Blind(ColourExtractor):
        def __call__(self, images, descriptor=False):
            return [None] * len(images)

    with pytest.raises(ValueError, match="no training identity has a face"):
        identity_bank([("train", ColourClips())], Blind())


@pytest.mark.skipif(not (importlib.util.find_spec("dlib") and importlib.util.find_spec("mediapipe")),
                    reason="needs the faces extra (dlib, mediapipe)")  # fmt: skip
def test_dlib_descriptors_tell_the_astronaut_from_synthetic_training_heads():
    """The shipped face model: a shifted astronaut crop follows the astronaut; a synthetic head follows the
    synthetic training identities."""
    from skimage.data import astronaut

    from export3d.data import SyntheticClips, SyntheticConfig
    from export3d.evaluation.face_features import FaceFeatureExtractor
    from export3d.utils.images import from_uint8

    photo = from_uint8(astronaut()[None])  # [1, 3, 512, 512]

    def crop(x0, y0, side=220):
        return torch.nn.functional.interpolate(photo[..., y0:y0 + side, x0:x0 + side], size=64, mode="area")

    heads = SyntheticClips(SyntheticConfig(train_identities=3, clips_per_identity=1, frames_per_clip=4), "train")
    extractor = FaceFeatureExtractor()
    try:
        bank = identity_bank([("synthetic", heads)], extractor, frames=2)
        probe = MemorisationProbe(extractor, bank)
        source = torch.cat([crop(120, 20), crop(120, 20)])
        output = torch.cat([crop(130, 28, 210), heads.load([(0, [1])])[0]["image"]])
        batch = EvalBatch(source, crop(126, 24).expand(2, -1, -1, -1), torch.zeros(2, 64), torch.zeros(2, 25),
                          crop(126, 24).expand(2, -1, -1, -1))  # fmt: skip
        probe.update("same_identity", batch, {"model": output})
    finally:
        extractor.close()
    result = probe.result()
    assert result["scored"] == 2 and [r["note"][0] for r in probe.rows] == ["S", "T"], probe.rows
    assert result["driving_follows_source"] == 1.0
