"""Shot cuts and long gaps split a video into clips, and the crop's smoothing never crosses a split.

Videos made from the astronaut photo (``tests/data/faces.py``): two shots of her at two places of the frame (the
face jumps, the colours stay), two shots at one place over two backgrounds (the colours change, the face stays),
and a long run of blank frames between two stretches of her. Plus the streaming pieces on their own: the
bounded-look-ahead smoother against the whole-clip one, and one decoding pass against the two-pass functions.
"""

import json

import numpy as np
import pytest

from export3d.data.crop import StreamingSmoother, calibration, crop_boxes, smooth
from export3d.data.face_pipeline import read_video_faces
from export3d.data.landmarker import FaceLandmarker, canonical_mesh
from export3d.data.prepare import main
from export3d.data.segments import CutConfig, Segmenter
from export3d.data.streaming import StreamConfig, stream_clips
from tests.data.faces import frame_transform, shot_frame, shot_transform, write_astronaut_frames, write_frames

SIZE = 64
SHOT = 16  # frames per shot
LEFT, RIGHT, MIDDLE = (180.0, 180.0), (460.0, 180.0), (320.0, 180.0)
SCALE = 0.55  # her face about 58 px in the 640 x 360 frames


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    videos = root / "videos"
    write_frames(videos / "jump", [shot_frame(t, LEFT if t < SHOT else RIGHT, SCALE) for t in range(2 * SHOT)])
    write_frames(videos / "scene", [shot_frame(t, MIDDLE, SCALE, 100 if t < SHOT else (30, 60, 200))
                                    for t in range(2 * SHOT)])  # fmt: skip
    write_astronaut_frames(videos / "gap", frames=52, blank=tuple(range(SHOT, 36)))  # 20 blank frames > --max-gap
    out = root / "clips"
    assert main([str(videos), "--out", str(out), "--size", str(SIZE), "--min-frames", "8", "--split-by", "none",
                 "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    return out, json.loads((out / "manifest.json").read_text())


def _video(out, name):
    return json.loads((out / name / "video.json").read_text())


def _frame_landmarks(out, clip):
    """The clip's landmarks in frame pixels # [T, 478, 2] and its crop boxes # [T, 3] (corner x, y, side)."""
    params = np.load(out / clip / "params.npz")
    crop = params["crop"].astype(np.float64)
    return params["landmarks"] * (crop[:, 2:] / SIZE)[:, None] + crop[:, None, :2], crop


def _photo_anchors(crop, transforms):
    """The crops' face anchors # [T, 2] mapped back into photo pixels through each frame's 2x3 map."""
    anchor, _ = calibration(canonical_mesh())
    points = crop[:, :2] + anchor[None] * crop[:, 2:]
    return np.array([np.linalg.solve(m[:, :2], p - m[:, 2]) for p, m in zip(points, transforms, strict=True)])


def _span(clip):
    return clip["first_frame"], clip["last_frame"], clip["starts_at"], clip["ends_at"]


def test_a_face_that_jumps_to_another_place_splits_the_video_and_the_crops_do_not_blend(prepared):
    out, manifest = prepared
    clips = [c for c in manifest["clips"] if c["video"] == "jump"]
    assert [_span(c) for c in clips] == [(0, SHOT - 1, "start", "cut"), (SHOT, 2 * SHOT - 1, "cut", "end")]
    video = _video(out, "jump")
    assert (video["face_jumps"], video["scene_cuts"], video["gaps"]) == (1, 0, 0)  # the colours hardly change
    for clip, centre in zip(clips, (LEFT, RIGHT), strict=True):
        _, crop = _frame_landmarks(out, clip["clip"])
        frames = range(clip["first_frame"], clip["last_frame"] + 1)
        back = _photo_anchors(crop, [shot_transform(t, centre, SCALE) for t in frames])
        # every crop, the last before the cut and the first after it included, frames the same spot of her face
        assert np.linalg.norm(back - back.mean(0), axis=1).max() < 0.02 * crop[:, 2].mean() / SCALE
    # what smoothing over both shots (the old pipeline) would have done to the last crop before the cut
    points = np.concatenate([_frame_landmarks(out, c["clip"])[0] for c in clips])
    blended = crop_boxes(canonical_mesh(), points, 2.0)
    alone = _frame_landmarks(out, clips[0]["clip"])[1]
    assert np.linalg.norm(blended.corner[SHOT - 1] - alone[-1, :2]) > 0.2 * alone[-1, 2]


def test_a_cut_where_the_face_stays_in_place_is_found_by_the_picture(prepared):
    out, manifest = prepared
    clips = [c for c in manifest["clips"] if c["video"] == "scene"]
    assert [_span(c) for c in clips] == [(0, SHOT - 1, "start", "cut"), (SHOT, 2 * SHOT - 1, "cut", "end")]
    video = _video(out, "scene")
    assert (video["scene_cuts"], video["face_jumps"], video["gaps"]) == (1, 0, 0)
    assert clips[1]["face_detections"] == 1  # the new shot is searched afresh, as a new video


def test_a_long_gap_without_a_face_splits_the_video_and_a_short_one_does_not(prepared):
    out, manifest = prepared
    clips = [c for c in manifest["clips"] if c["video"] == "gap"]
    assert [_span(c) for c in clips] == [(0, SHOT - 1, "start", "gap"), (36, 51, "gap", "end")]
    assert _video(out, "gap")["gaps"] == 1 and all(c["dropped_no_face"] == 0 for c in clips)
    for clip in clips:  # each clip's crops follow her on their own (no pull towards the other clip's frames)
        _, crop = _frame_landmarks(out, clip["clip"])
        back = _photo_anchors(crop, [frame_transform(t) for t in range(clip["first_frame"], clip["last_frame"] + 1)])
        assert np.linalg.norm(back - back.mean(0), axis=1).max() < 0.02 * crop[:, 2].mean()
    with pytest.raises(ValueError, match="--max-gap"):
        CutConfig(max_gap=-1)


def test_a_cut_to_black_and_back_keeps_the_clip_and_another_shot_after_it_does_not():
    shot, other = shot_frame(0, MIDDLE, SCALE), shot_frame(1, MIDDLE, SCALE, (30, 60, 200))
    black = np.zeros_like(shot)
    anchor, size = np.array(MIDDLE), 60.0  # the face stays put: only the picture can split

    def splits(frames):
        segmenter, out = Segmenter(CutConfig()), []
        for index, frame in enumerate(frames):
            segmenter.picture_changed(frame)
            if frame is black:
                out.append(segmenter.gap_exceeded(index))
            else:
                out.append(segmenter.face_cut(index, 1, anchor, size))
                segmenter.keep(index, anchor, size)
        return out

    assert splits([shot, shot, black, black, shot]) == [None, None, False, False, None]
    assert splits([shot, shot, black, black, other]) == [None, None, False, False, "cut"]
    assert splits([shot, other, other]) == [None, "cut", None]


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.0, 3.3])
def test_the_streaming_smoother_is_the_whole_clip_smoother_with_a_bounded_look_ahead(sigma):
    rng = np.random.default_rng(0)
    for length in (1, 2, 3, 6, 7, 8, 13, 40):
        values = rng.normal(size=(length, 3)).cumsum(0)
        smoother = StreamingSmoother(sigma)
        out, held = [], 0
        for k, value in enumerate(values):
            out += smoother.push(k, value)
            held = max(held, smoother.pending)
        out += smoother.flush()
        assert [item for item, _ in out] == list(range(length))
        np.testing.assert_allclose(np.stack([v for _, v in out]), smooth(values, sigma), rtol=0, atol=1e-12)
        assert held <= smoother.radius + 1  # frames held: the look-ahead, whatever the clip's length


class Frames:
    """A sink keeping everything :func:`stream_clips` gives."""

    def __init__(self):
        self.events, self.frames = [], []

    def begin(self, reason):
        self.events.append(("begin", reason))

    def frame(self, frame):
        self.frames.append(frame)

    def end(self, reason):
        self.events.append(("end", reason))


def test_one_streaming_pass_gives_the_two_pass_pipelines_clip(tmp_path):
    folder = write_astronaut_frames(tmp_path / "astronaut")
    mesh = canonical_mesh()
    with FaceLandmarker() as landmarker:
        _, params, crops = read_video_faces(folder, landmarker, mesh, SIZE)
        sink = Frames()
        stats = stream_clips(folder, landmarker, mesh, StreamConfig(SIZE), sink)
    assert sink.events == [("begin", "start"), ("end", "end")] and stats.frames_with_face == len(crops)
    np.testing.assert_array_equal([f.index for f in sink.frames], params.frame_index)
    box = np.stack([f.box for f in sink.frames])
    np.testing.assert_allclose(box[:, :2], params.boxes.corner, rtol=0, atol=1e-9)
    np.testing.assert_allclose(box[:, 2], params.boxes.side, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack([f.landmarks for f in sink.frames]), params.landmarks, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack([f.camera for f in sink.frames]), params.cameras, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.stack([f.expression for f in sink.frames]), params.expression)
    gaps = [np.abs(f.crop.astype(int) - c.astype(int)).max() for f, c in zip(sink.frames, crops, strict=True)]
    assert max(gaps) <= 1
