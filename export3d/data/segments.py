"""Where a video's face track must be split into separate clips: shot cuts and long gaps without a face.

The crop of a clip is smoothed over time (:mod:`~export3d.data.crop`) and training pairs any two frames of a clip,
so a clip must be one continuous shot of one face. :class:`Segmenter` watches the frames ``prepare`` reads, in
order, and says where a clip ends:

- **scene change**: the colour histogram of a 64 x 64 thumbnail (8 levels per channel, 512 bins) jumped by more
  than ``CutConfig.scene`` from one frame read to the next somewhere since the clip's last frame, and the frame
  with a face now differs from that last frame by more than ``CutConfig.scene`` too (total variation distance:
  half the L1 distance of the normalised histograms, 0 for the same colours, 1 for disjoint ones). This catches a
  cut even where the face stays in place (two people framed alike, one camera then another), while a cut to black
  and back to the same shot, or a picture that drifts slowly across a short gap, does not split the clip;
- **face jump**: between two consecutive frames with a face, the face's anchor (the crop's centre point,
  :func:`~export3d.data.crop.face_measures`) moved by more than ``CutConfig.face_jump`` face sizes, or its size
  changed by more than ``CutConfig.face_scale`` (absolute log ratio), per video frame elapsed; this catches a cut
  the histogram misses (the same set, another framing) and a tracker that lost the face and found it elsewhere;
- **gap**: more than ``CutConfig.max_gap`` video frames in a row without a face. A shorter gap (a blink, a hand,
  motion blur) stays inside the clip, and the smoothing bridges it.

The thresholds come from 17 real videos (12 talking heads, 5 full-body or interview shots; their first 300
frames): within a shot the histogram distance never passed 0.094 from one frame to the next (0.208 across 13
frames, in a video whose picture changes slowly: hence both tests above), and the face moved at most 0.41 face
sizes and changed size by at most 0.089 (log ratio) from one frame to the next, while all 272 artificial cuts
between the last frame of one video and the first of another had a histogram distance of at least 0.296
(``docs/data.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export3d.utils.extras import require

THUMB = 64  # side of the thumbnail the histogram is taken of
LEVELS = 8  # histogram levels per colour channel


@dataclass(frozen=True)
class CutConfig:
    max_gap: int = 12  # video frames in a row without a face that a clip bridges (about 0.5 s at 25 fps)
    scene: float = 0.2  # histogram distance between frames that is a cut (>= 1: never)
    face_jump: float = 1.0  # face anchor move, in face sizes per video frame elapsed, that is a cut
    face_scale: float = 0.4  # |log face size ratio| per video frame elapsed that is a cut

    def __post_init__(self) -> None:
        checks = [(self.max_gap >= 0, f"--max-gap must be >= 0, got {self.max_gap}"),
                  (self.scene > 0, f"--cut-scene must be > 0, got {self.scene}"),
                  (self.face_jump > 0, f"--cut-jump must be > 0, got {self.face_jump}"),
                  (self.face_scale > 0, f"--cut-scale must be > 0, got {self.face_scale}")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """frame # [H, W, 3] uint8 -> the normalised 512-bin colour histogram of its 64 x 64 thumbnail # [512].

    The thumbnail is the frame sampled every ``H // 64``-th row and ``W // 64``-th column, then area-averaged to
    64 x 64: 0.04 ms for a 1080p frame, where one area resize of the whole frame takes 10-20 ms (OpenCV's general
    path for a non-integer ratio).
    """
    cv2 = require("cv2")
    h, w = frame.shape[:2]
    sampled = np.ascontiguousarray(frame[:: max(h // THUMB, 1), :: max(w // THUMB, 1)])
    thumb = cv2.resize(sampled, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    q = (thumb // (256 // LEVELS)).reshape(-1, 3).astype(np.int64)
    counts = np.bincount((q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2], minlength=LEVELS**3)
    return counts / counts.sum()


def scene_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between two histograms of :func:`colour_histogram`, in [0, 1]."""
    return 0.5 * float(np.abs(a - b).sum())


class Segmenter:
    """Follows the frames of one video in order and says where its current clip ends.

    Per frame read for the face, in order: :meth:`picture_changed` with the frame; then, when the frame has a face,
    :meth:`face_cut` with its anchor and size (and :meth:`keep` once it is added to a clip), or, when it has none,
    :meth:`gap_exceeded`. ``scene_cuts``, ``face_jumps`` and ``gaps`` count the splits of each kind.

    A jump of the picture from one frame to the next (:meth:`picture_changed`: the caller then looks for the face
    afresh, as in a new video) splits the clip only if the next frame with a face also differs from the clip's last
    frame: a few frames without a face (a cut to black and back, a cutaway) do not split a clip that resumes the
    same shot, while a different shot after them does.
    """

    def __init__(self, cfg: CutConfig = CutConfig()):
        self.cfg = cfg
        self.scene_cuts = self.face_jumps = self.gaps = 0
        self._previous: np.ndarray | None = None  # the histogram of the previous frame read
        self._current: np.ndarray | None = None  # ... of the frame being looked at
        self._jumped = False  # the picture jumped between two frames read since the last kept face
        self._last: tuple[int, np.ndarray, float, np.ndarray] | None = None  # last kept: index, anchor, size, hist

    def picture_changed(self, frame: np.ndarray) -> bool:
        """Whether ``frame``'s colours differ from the previous frame's beyond the threshold (a cut, a flash)."""
        self._previous, self._current = self._current, colour_histogram(frame)
        jumped = self._previous is not None and scene_distance(self._previous, self._current) > self.cfg.scene
        self._jumped |= jumped
        return jumped

    def gap_exceeded(self, index: int) -> bool:
        """Frame ``index`` has no face: whether the run of frames without one since the last face is too long."""
        if self._last is None or index - self._last[0] <= self.cfg.max_gap:
            return False
        self.gaps += 1
        self._last = None
        return True

    def face_cut(self, index: int, every: int, anchor: np.ndarray, size: float) -> str | None:
        """A face at frame ``index`` (frames read every ``every``): "gap" or "cut" when it cannot continue the clip
        of the last kept face, None when it can (or when there is no open clip)."""
        if self._last is None:
            return None
        last, last_anchor, last_size, last_picture = self._last
        if index - last - every > self.cfg.max_gap:
            self.gaps += 1
            self._last = None
            return "gap"
        if self._jumped and scene_distance(last_picture, self._current) > self.cfg.scene:
            self.scene_cuts += 1
            self._last = None
            return "cut"
        elapsed = index - last
        moved = float(np.linalg.norm(np.asarray(anchor) - last_anchor)) / last_size
        if moved > self.cfg.face_jump * elapsed or abs(np.log(size / last_size)) > self.cfg.face_scale * elapsed:
            self.face_jumps += 1
            self._last = None
            return "cut"
        return None

    def keep(self, index: int, anchor: np.ndarray, size: float) -> None:
        """The face of frame ``index`` (the frame last given to :meth:`picture_changed`) was added to the clip."""
        self._last = (index, np.asarray(anchor, dtype=np.float64), float(size), self._current)
        self._jumped = False

    def close(self) -> None:
        """The open clip was ended: the next face starts a new one."""
        self._last = None
