"""One job of ``prepare`` in the process that runs it: a video (or Deep3DFaceRecon folder) -> its folder and record.

:func:`init_worker` sets a process up once (its own MediaPipe landmarker and the canonical mesh; one thread for
OpenCV and PyTorch in a worker process, so that N workers share N cores); :func:`run_job` then prepares one
video into ``out/<name>/``: its clips ``000``, ``001``, ... (one per segment of at least ``--min-frames`` frames,
:mod:`~export3d.data.streaming`) and ``video.json``, its record, all inside a temporary folder renamed into place
when the video is done, so a crash or Ctrl-C leaves the earlier state or nothing. A Deep3DFaceRecon folder gives
one clip, written as the folder itself (no face tracking, no segments).

Any failure of one video (the decoder, PnP, the landmarker, a bad coefficient file, anything else) comes back as a
``failure`` entry ``{"source", "clip", "kind", "reason"}`` with the traceback, never as an exception, so the run
goes on; ``kind`` is one of :data:`KINDS`.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from export3d.data.jobs import Job, PrepareConfig
from export3d.utils.outputs import atomic_write_json, replacing_folder
from export3d.utils.signals import Terminated

VIDEO_EXPRESSION = "MediaPipe face landmarker blendshapes (face_landmarker.task)"
DEEP3D_EXPRESSION = "Deep3DFaceRecon exp coefficients 80:144 (BFM)"
# why a video (or one of its segments) gave no clip; "worker died" is decided by export3d.data.parallel
KINDS = ("too few frames", "no face", "unreadable", "no pose", "error", "worker died")

_TOOLS: dict = {}  # this process's face tools, made by init_worker


def init_worker(min_confidence: float | None, worker_process: bool = True) -> None:
    """Set this process up: a landmarker with ``min_confidence`` (None: no face tools, for Deep3DFaceRecon
    folders). ``worker_process``: a process of the pool: one OpenCV and one PyTorch thread (one process per
    core), and SIGTERM ends the video at hand the way Ctrl-C does (its temporary folder removed)."""
    _TOOLS.clear()
    if worker_process:
        import cv2
        import torch

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        signal.signal(signal.SIGTERM, _terminated)
    if min_confidence is not None:
        from export3d.data.landmarker import FaceLandmarker, canonical_mesh

        _TOOLS["mesh"] = canonical_mesh()
        _TOOLS["landmarker"] = FaceLandmarker(min_confidence=min_confidence)


def _terminated(signum, frame) -> None:
    """SIGTERM in a worker process: interrupt the job at hand (its folder is cleaned up), or exit when idle."""
    if _TOOLS.get("busy"):
        raise Terminated(f"signal {signum}")
    sys.exit(128 + signum)


def close_worker() -> None:
    landmarker = _TOOLS.pop("landmarker", None)
    if landmarker is not None:
        landmarker.close()
    _TOOLS.clear()


def run_job(job: Job, cfg: PrepareConfig, out: Path, deep3d: bool = False, progress: bool = False) -> dict:
    """Prepare one job into ``out``: ``{"record": video record}`` or ``{"failure": entry, "traceback": text}``."""
    from export3d.data.deep3d import Deep3DFormatError
    from export3d.data.frames import VideoError
    from export3d.data.streaming import PoseError

    if _TOOLS.get("stopping"):  # interrupted: no new video (the pool may have queued some already)
        raise Terminated("prepare is stopping")
    _TOOLS["busy"] = True
    try:
        record = _deep3d_job(job, cfg, out) if deep3d else _video_job(job, cfg, out, progress)
        return {"record": record}
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the video's temporary folder is gone; take no other
        _TOOLS["stopping"] = True
        raise
    except Exception as err:  # noqa: BLE001 - one bad video must not stop the run: reported with its reason
        if isinstance(err, VideoError | Deep3DFormatError):
            kind, message = "unreadable", one_line(str(err))
        elif isinstance(err, PoseError):
            kind, message = "no pose", f"{job.source}: {one_line(str(err))}"
        else:
            kind, message = "error", f"{job.source}: {type(err).__name__}: {one_line(str(err))}"
        entry = {"source": str(job.source), "clip": job.name, "kind": kind, "reason": f"{kind}: {message}"}
        return {"failure": entry, "traceback": traceback.format_exc()}
    finally:
        _TOOLS["busy"] = False


def one_line(message: str) -> str:
    """An error message on one line: its first line, and its last one in brackets when there are more (ffmpeg's
    errors carry its whole log; the first line says what failed, the last why)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0]} ({lines[-1]})"


def _video_job(job: Job, cfg: PrepareConfig, out: Path, progress: bool) -> dict:
    from export3d.data.clip_writer import VideoClipsWriter
    from export3d.data.streaming import stream_clips

    landmarker, mesh = _TOOLS["landmarker"], _TOOLS["mesh"]
    video = {"video": job.name, "identity": job.identity, "source": str(job.source)}
    with replacing_folder(out / job.name) as tmp:
        clips = VideoClipsWriter(tmp, video, cfg.min_frames, cfg.every)
        stats = stream_clips(job.source, landmarker, mesh, cfg.stream(), clips, progress)
        skipped = clips.skipped
        if stats.frames_with_face == 0:
            reason = f"no face: none of the {stats.frames_considered} frames read has a face"
            skipped = [{"source": str(job.source), "clip": job.name, "kind": "no face", "reason": reason}]
        record = {**video, "resolution": cfg.size, "expression": VIDEO_EXPRESSION,
                  "expression_names": landmarker.blendshape_names, "frames_read": stats.frames_read,
                  "frames_considered": stats.frames_considered, "frames_with_face": stats.frames_with_face,
                  "dropped_no_face": stats.frames_considered - stats.frames_with_face,
                  "face_detections": stats.detections, "scene_cuts": stats.scene_cuts,
                  "face_jumps": stats.face_jumps, "gaps": stats.gaps, "clips": clips.clips,
                  "skipped": skipped}  # fmt: skip
        (tmp / "video.json").write_text(json.dumps(record, indent=1))
    return record


def _deep3d_job(job: Job, cfg: PrepareConfig, out: Path) -> dict:
    """One folder of images + Deep3DFaceRecon fits -> one clip, written as ``out/<name>`` itself."""
    from export3d.data.clips import write_clip_files
    from export3d.data.deep3d import clip_frames, read_deep3d_clip

    clip = read_deep3d_clip(job.source)
    n = len(clip.images)
    record = {"video": job.name, "identity": job.identity, "source": str(job.source), "resolution": cfg.size,
              "expression": DEEP3D_EXPRESSION, "frames_read": n, "clips": [], "skipped": []}  # fmt: skip
    if n < cfg.min_frames:
        record["skipped"] = [{"source": str(job.source), "clip": job.name, "kind": "too few frames",
                              "reason": f"too few frames: {n} images; --min-frames is {cfg.min_frames}"}]  # fmt: skip
    else:
        kept = list(range(n))
        arrays = {"expression": clip.expression, "camera": clip.camera, "frame_index": np.array(kept, np.int64)}
        clip_record = {"clip": job.name, "video": job.name, "identity": job.identity, "source": str(job.source),
                       "frames": n, "first_frame": 0, "last_frame": n - 1, "dropped_no_face": 0,
                       "expression_dim": 64}  # fmt: skip
        write_clip_files(out / job.name, clip_frames(clip, cfg.size), arrays, clip_record)
        record["clips"] = [clip_record]
    (out / job.name).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / job.name / "video.json", record)  # last: the folder is done once this exists
    return record
