"""On-disk clip format for real (or exported synthetic) data: writer, validating loader, ``ClipSource``.

Layout of a dataset root::

    root/manifest.json
    root/<clip>/00000.png, 00001.png, ...   (or .jpg/.jpeg; named in frame order)  -- or one <name>.mp4
    root/<clip>/params.npz                  expression [T, 64], camera [T, 25] (float32)

``manifest.json``::

    {"format": "export3d-clips", "version": 1, "resolution": 256,
     "clips": [{"clip": "train/id0000000_clip00", "identity": 0, "frames": 64, "split": "train"}, ...]}

``clip`` is the clip folder relative to the root (and the clip's name), ``identity`` an int or a
string (strings are mapped to ints by sorted order), ``frames`` = T, ``split`` e.g. "train"/"test".
``resolution`` is optional (images must then all share the first frame's size). ``expression`` is
the 3DMM vector, 64-d by default (Deep3DFaceRecon coefficients 80:144); an optional top-level
``"expression_dim"`` gives another size E (52 for the MediaPipe blendshapes written by
``export3d.data.prepare``), and ``expression`` is then ``[T, E]``. ``camera`` is the EG3D 25-d camera (see
``cameras``). Frames are square RGB images of the stated resolution. A synthetic export may also
store ``true_expression [T, 6]`` in ``params.npz``; it is loaded when present.

``ClipFolder`` checks everything when it is opened and raises ``ClipFormatError`` naming the file
and the problem. It serves reconstruction pairs and contrastive groups (via ``datasets``);
cross-identity triples need ground truth that real folders do not have (use ``SyntheticClips``).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from export3d.data.frames import frame_files
from export3d.data.heads import N_EXPRESSION
from export3d.data.source import BETA_DIM, CAMERA_DIM, ClipInfo
from export3d.data.synthetic import SyntheticClips, SyntheticConfig
from export3d.utils.images import from_uint8, to_uint8
from export3d.utils.outputs import atomic_write_json, replacing_folder

FORMAT = "export3d-clips"
VERSION = 1


class ClipFormatError(ValueError):
    """Bad data on disk; the message starts with the offending file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


class NpzArrays(dict):
    """Every array of one .npz file, read up front (``files`` as on numpy's NpzFile)."""

    @property
    def files(self) -> list[str]:
        return list(self)


def read_npz(path: Path) -> NpzArrays:
    """Read every array of ``path``; garbage, truncated or pickled content is a ``ClipFormatError`` naming it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # numpy.load would try (and refuse) to unpickle anything else
        raise ClipFormatError(path, "not an .npz archive (expected a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return NpzArrays({key: npz[key] for key in npz.files})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ClipFormatError(path, f"cannot read: truncated or damaged ({type(err).__name__}: {err})") from err


def check_array(path: Path, params: np.lib.npyio.NpzFile, key: str, width: int, frames: int) -> np.ndarray:
    if key not in params.files:
        raise ClipFormatError(path, f"missing array {key!r} (has {sorted(params.files)})")
    arr = params[key]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ClipFormatError(path, f"{key!r} must have shape [T, {width}], got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ClipFormatError(path, f"{key!r} must be a float array (float32), got dtype {arr.dtype}")
    if arr.shape[0] != frames:
        raise ClipFormatError(path, f"frame/param count mismatch: {key!r} has {arr.shape[0]} rows but the "
                                    f"manifest says {frames} frames")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ClipFormatError(path, f"{key!r} has NaN/inf values in {int(bad.sum())} rows (first: row "
                                    f"{int(np.argmax(bad))})")
    return arr.astype(np.float32)


def check_cameras(path: Path, camera: np.ndarray) -> None:
    mats = camera[:, :16].reshape(-1, 4, 4).astype(np.float64)
    rot = mats[:, :3, :3]
    err = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    bottom = np.abs(mats[:, 3] - np.array([0, 0, 0, 1.0])).max(axis=1)
    bad = (err > 1e-2) | (bottom > 1e-4) | (np.linalg.det(rot) < 0)
    if bad.any():
        raise ClipFormatError(path, f"'camera' row {int(np.argmax(bad))} is not a rigid cam2world matrix "
                                    "(rotation must be orthonormal with det +1, last row 0 0 0 1)")
    no_focal = (camera[:, [16, 20]] <= 0).any(axis=1)  # fx, fy of the normalised intrinsics
    if no_focal.any():
        raise ClipFormatError(path, f"'camera' row {int(np.argmax(no_focal))} has intrinsics [16:25] with fx or fy "
                                    "<= 0 (expected fx, 0, cx, 0, fy, cy, 0, 0, 1 with fx, fy > 0)")


class ClipFolder:
    """A validated on-disk dataset (optionally one split of it); a ``ClipSource`` for ``datasets``.

    ``resolution``: expected image size (default: the manifest's, else the first frame's).
    ``check_images=False`` skips reading every frame's header at open time (counts are still checked).
    """

    def __init__(self, root: str | Path, split: str | None = None, resolution: int | None = None,
                 check_images: bool = True):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise ClipFormatError(manifest, "manifest not found (expected manifest.json at the dataset root)")
        try:
            meta = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ClipFormatError(manifest, f"not valid JSON: {err}") from err
        if not isinstance(meta, dict) or not isinstance(meta.get("clips"), list):
            raise ClipFormatError(manifest, "must be a JSON object with a 'clips' list")
        if meta.get("format", FORMAT) != FORMAT:
            raise ClipFormatError(manifest, f"'format' is {meta['format']!r}, expected {FORMAT!r}")
        self.resolution = resolution or meta.get("resolution")
        dim = meta.get("expression_dim") or BETA_DIM
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ClipFormatError(manifest, f"'expression_dim' must be a positive int, got {dim!r}")
        self.expression_dim = dim
        entries = [self._entry(manifest, i, e) for i, e in enumerate(meta["clips"])]
        names = [e["clip"] for e in entries]
        if len(set(names)) != len(names):
            raise ClipFormatError(manifest, "duplicate clip folders in 'clips'")
        if split is not None:
            entries = [e for e in entries if e["split"] == split]
        raw_ids = [e["identity"] for e in entries]
        if all(isinstance(i, int) for i in raw_ids):
            ids = raw_ids
        else:
            order = {name: k for k, name in enumerate(sorted({str(i) for i in raw_ids}))}
            ids = [order[str(i)] for i in raw_ids]
        self.clips = [ClipInfo(e["clip"], i, e["frames"], e["split"]) for e, i in zip(entries, ids, strict=True)]
        self._params: list[dict[str, np.ndarray]] = []
        self._media: list[list[Path] | Path] = []
        for clip in self.clips:
            params, media = self._validate_clip(clip, check_images)
            self._params.append(params)
            self._media.append(media)

    @staticmethod
    def _entry(manifest: Path, i: int, entry: object) -> dict:
        if not isinstance(entry, dict):
            raise ClipFormatError(manifest, f"clips[{i}] must be an object")
        for key, kind in (("clip", str), ("identity", (int, str)), ("frames", int), ("split", str)):
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                raise ClipFormatError(manifest, f"clips[{i}] needs {key!r} of type {kind}, got {entry.get(key)!r}")
        if entry["frames"] < 1:
            raise ClipFormatError(manifest, f"clips[{i}] ({entry['clip']!r}) has frames = {entry['frames']}")
        if Path(entry["clip"]).is_absolute() or ".." in Path(entry["clip"]).parts:
            raise ClipFormatError(manifest, f"clips[{i}]: clip folder {entry['clip']!r} must be inside the root")
        return entry

    def _validate_clip(self, clip: ClipInfo, check_images: bool) -> tuple[dict[str, np.ndarray], list[Path] | Path]:
        folder = self.root / clip.name
        if not folder.is_dir():
            raise ClipFormatError(folder, "clip folder listed in manifest.json does not exist")
        path = folder / "params.npz"
        if not path.is_file():
            raise ClipFormatError(path, "missing params.npz")
        try:
            npz = read_npz(path)
            params = {"beta": check_array(path, npz, "expression", self.expression_dim, clip.frames),
                      "camera": check_array(path, npz, "camera", CAMERA_DIM, clip.frames)}
            if "true_expression" in npz.files:
                params["true_expression"] = check_array(path, npz, "true_expression", N_EXPRESSION, clip.frames)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            if isinstance(err, ClipFormatError):
                raise
            raise ClipFormatError(path, f"cannot read: {err}") from err
        check_cameras(path, params["camera"])
        frames = frame_files(folder)
        videos = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mp4")
        if frames:
            if len(frames) != clip.frames:
                raise ClipFormatError(folder, f"missing frames: found {len(frames)} image files but params.npz "
                                              f"and the manifest have {clip.frames} frames")
            if check_images:
                for f in frames:
                    self._check_size(f, *self._image_size(f))
            return params, frames
        if len(videos) != 1:
            raise ClipFormatError(folder, f"no frames: expected {clip.frames} PNG/JPEG files or one .mp4, "
                                          f"found {len(videos)} .mp4 files")
        count, size = self._video_info(videos[0])
        if count != clip.frames:
            raise ClipFormatError(videos[0], f"frame/param count mismatch: video has {count} frames, params.npz "
                                             f"has {clip.frames}")
        self._check_size(videos[0], *size)
        return params, videos[0]

    @staticmethod
    def _image_size(path: Path) -> tuple[int, int]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return im.size
        except (OSError, UnidentifiedImageError) as err:
            raise ClipFormatError(path, f"cannot read image: {err}") from err

    @staticmethod
    def _video_info(path: Path) -> tuple[int, tuple[int, int]]:
        import imageio.v2 as iio

        try:
            with iio.get_reader(path, "ffmpeg") as reader:
                return reader.count_frames(), tuple(reader.get_meta_data()["size"])
        except (OSError, RuntimeError, ValueError) as err:
            raise ClipFormatError(path, f"cannot read video: {err}") from err

    def _check_size(self, path: Path, width: int, height: int) -> None:
        if width != height:
            raise ClipFormatError(path, f"wrong image size: frames must be square, got {width}x{height}")
        if self.resolution is None:
            self.resolution = width
        if width != self.resolution:
            raise ClipFormatError(path, f"wrong image size: {width}x{height}, expected "
                                        f"{self.resolution}x{self.resolution}")

    def _read_frames(self, clip: int, frames: Sequence[int]) -> torch.Tensor:
        media = self._media[clip]
        if isinstance(media, Path):  # a video: decode the requested frames
            import imageio.v2 as iio

            with iio.get_reader(media, "ffmpeg") as reader:
                pixels = [np.asarray(reader.get_data(f))[..., :3] for f in frames]
        else:
            from PIL import Image

            pixels = []
            for f in frames:
                with Image.open(media[f]) as im:
                    pixels.append(np.asarray(im.convert("RGB")))
        for f, px in zip(frames, pixels, strict=True):
            if px.shape[:2] != (self.resolution, self.resolution):
                where = media if isinstance(media, Path) else media[f]
                raise ClipFormatError(where, f"wrong image size at frame {f}: {px.shape[1]}x{px.shape[0]}")
        return from_uint8(np.stack(pixels))  # [n, 3, R, R]

    def load(self, requests: Sequence[tuple[int, Sequence[int]]]) -> list[dict[str, torch.Tensor]]:
        """Per (clip index, frames): "image" # [n, 3, R, R], "beta" # [n, E], "camera" # [n, 25] (+ extras)."""
        out = []
        for clip, frames in requests:
            frames = list(frames)
            item = {"image": self._read_frames(clip, frames)}
            item.update({k: torch.from_numpy(v[frames]) for k, v in self._params[clip].items()})
            out.append(item)
        return out


def write_clip_files(folder: Path, frames: Sequence[np.ndarray], arrays: dict[str, np.ndarray],
                     record: dict | None = None, video: bool = False) -> None:
    """Write one clip folder: frames (uint8 ``[R, R, 3]`` each) as PNGs (or one mp4), ``params.npz`` with ``arrays``
    and, when given, ``record`` as ``clip.json`` (what ``prepare`` keeps about the clip's source).

    The clip is written into a temporary sibling folder and renamed into place (replacing an earlier copy only
    then), so a crash or Ctrl-C never leaves a half-written clip under ``folder``.
    """
    with replacing_folder(folder) as tmp:
        if video:
            import imageio.v2 as iio

            iio.mimwrite(tmp / "frames.mp4", list(frames), fps=25, macro_block_size=1)
        else:
            from PIL import Image

            for t, px in enumerate(frames):
                Image.fromarray(px).save(tmp / f"{t:05d}.png", compress_level=1)  # level 6 dominated a profile
        np.savez(tmp / "params.npz", **arrays)
        if record is not None:
            (tmp / "clip.json").write_text(json.dumps(record, indent=1))


def write_clip(folder: Path, images: torch.Tensor, beta: torch.Tensor, camera: torch.Tensor,
               extras: dict[str, torch.Tensor] | None = None, video: bool = False) -> None:
    """:func:`write_clip_files` for tensors: images # [T, 3, R, R] in [-1, 1], beta # [T, E], camera # [T, 25]."""
    arrays = {"expression": beta.numpy().astype(np.float32), "camera": camera.numpy().astype(np.float32)}
    arrays.update({k: v.numpy().astype(np.float32) for k, v in (extras or {}).items()})
    write_clip_files(folder, list(to_uint8(images)), arrays, video=video)


def export_synthetic(config: SyntheticConfig, root: str | Path, splits: Sequence[str] = ("train", "test"),
                     video: bool = False) -> Path:
    """Render every clip of ``splits`` into ``root`` in the on-disk format and write the manifest.

    Clips of other splits already listed in an existing manifest are kept. Returns the manifest path.
    """
    root = Path(root)
    manifest = root / "manifest.json"
    entries = json.loads(manifest.read_text())["clips"] if manifest.is_file() else []
    entries = [e for e in entries if e.get("split") not in splits]
    for split in splits:
        source = SyntheticClips(config, split)
        for index, clip in enumerate(source.clips):
            data = source.load([(index, range(clip.frames))])[0]
            write_clip(root / clip.name, data["image"], data["beta"], data["camera"],
                       {"true_expression": data["true_expression"]}, video)
            entries.append({"clip": clip.name, "identity": clip.identity, "frames": clip.frames, "split": split})
    meta = {"format": FORMAT, "version": VERSION, "resolution": config.resolution, "clips": entries,
            "expression_dim": SyntheticClips(config, splits[0]).expression_dim if splits else BETA_DIM,
            "generator": {"name": "export3d.data.synthetic", "config": asdict(config)}}
    atomic_write_json(manifest, meta)
    return manifest
