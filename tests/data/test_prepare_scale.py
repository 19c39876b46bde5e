"""``prepare`` at dataset scale: worker processes, shards and their merge, identity levels, crash-proof workers.

- ``--workers 2`` gives exactly the clips, ``params.npz`` arrays and manifest of ``--workers 1``;
- ``--shard K/N`` runs into one folder give, once merged (by the last shard, or ``--merge``), the manifest of one
  unsharded run; a merge with a shard missing names it;
- ``--identity-level 2`` on VoxCeleb's ``id/youtube_id/clip.mp4`` layout keeps every person in one split (level
  1, the YouTube id, does not), and a rerun with another level relabels the clips without redoing them;
- a worker process that dies takes only its own job down, reported by name.
"""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from export3d.data.clip_writer import ClipWriter
from export3d.data.clips import read_npz
from export3d.data.jobs import Job, PrepareConfig, find_jobs
from export3d.data.manifest import DatasetIndex, manifest_dict
from export3d.data.parallel import CRASH_REASON, run_jobs
from export3d.data.prepare import main, prepare
from export3d.data.shards import Shard, merge
from tests.data.faces import shot_frame, write_astronaut_frames, write_frames

SIZE = 64


def _tree(root):
    """Every file under ``root`` -> its content: JSON as dicts, npz as arrays, anything else as bytes."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if path.suffix == ".json":
            files[key] = json.loads(path.read_text())
        elif path.suffix == ".npz":
            files[key] = dict(read_npz(path))
        else:
            files[key] = path.read_bytes()
    return files


def test_two_workers_give_exactly_the_clips_of_one(tmp_path):
    videos = tmp_path / "videos"
    write_astronaut_frames(videos / "alice" / "talk", frames=12)
    write_frames(videos / "bob" / "cut", [shot_frame(t, (180, 180) if t < 10 else (460, 180), 0.55)
                                          for t in range(20)])  # fmt: skip
    (videos / "carol").mkdir()
    (videos / "carol" / "broken.mp4").write_bytes(b"not a video")
    trees = []
    for workers in (1, 2):
        out = tmp_path / f"clips{workers}"
        assert main([str(videos), "--out", str(out), "--size", str(SIZE), "--min-frames", "8", "--workers",
                     str(workers), "--no-progress"]) == 0  # fmt: skip
        trees.append(_tree(out))
    one, two = trees
    assert sorted(one) == sorted(two)
    assert [c["clip"] for c in one["manifest.json"]["clips"]] == ["alice/talk/000", "bob/cut/000", "bob/cut/001"]
    for key in one:
        if key.endswith(".npz"):
            assert one[key].keys() == two[key].keys()
            for name in one[key]:
                np.testing.assert_array_equal(one[key][name], two[key][name], err_msg=f"{key}: {name}")
        else:
            assert one[key] == two[key], key


def _deep3d_folders(root, names, frames=4):
    """Folders of tiny images with Deep3DFaceRecon coefficient files, one per name (``person/clip``)."""
    rng = np.random.default_rng(0)
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"f{t}.png")
            savemat(folder / f"f{t}.mat", {"exp": rng.normal(size=(1, 64)), "angle": rng.normal(0, 0.1, (1, 3)),
                                           "trans": rng.normal(0, 0.1, (1, 3))})  # fmt: skip
    return root


def test_shards_into_one_folder_merge_into_the_manifest_of_one_run(tmp_path):
    names = [f"person{p}/clip{c}" for p in range(6) for c in range(2)]
    fits = _deep3d_folders(tmp_path / "fits", names)
    flags = ["--from-deep3d", str(fits), "--size", "16", "--min-frames", "2", "--test-fraction", "0.3",
             "--workers", "1", "--no-progress"]  # fmt: skip
    assert main([*flags, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    out = tmp_path / "sharded"
    shards = [Shard(k, 3) for k in range(3)]
    held = [[n for n in names if s.holds(n)] for s in shards]
    assert sorted(sum(held, [])) == sorted(names) and all(held)  # each video in exactly one shard
    for k in (0, 1):
        assert main([*flags, "--out", str(out), "--shard", f"{k}/3"]) == 0
        part = json.loads((out / "manifest.parts" / shards[k].part_name).read_text())
        assert part["complete"] and sorted(r["video"] for r in part["records"]) == sorted(held[k])
    assert not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match=r"no part from shard\(s\) 2 of 3"):
        merge(out)
    assert main(["--merge", str(out)]) == 2  # the command says so too
    assert main([*flags, "--out", str(out), "--shard", "2/3"]) == 0  # the last shard writes the manifest
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["generator"].pop("shards") == 3
    assert merged == whole
    (out / "manifest.json").unlink()
    assert main(["--merge", str(out)]) == 0 and json.loads((out / "manifest.json").read_text())["clips"] == \
        whole["clips"]  # fmt: skip
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def _voxceleb(root, people=40, videos=3, clips=2):
    """VoxCeleb2's layout, ``id/youtube_id/clip.mp4`` (empty files: only the paths matter here)."""
    for p in range(people):
        for v in range(videos):
            folder = root / f"id{p:05d}" / f"yt{p:03d}x{v}"
            folder.mkdir(parents=True)
            for c in range(clips):
                (folder / f"{c:05d}.mp4").touch()
    return root


def _splits(jobs, split_by="identity"):
    """Each person's (top folder's) splits in the manifest of one fake clip per job."""
    index = DatasetIndex()
    for job in jobs:
        clip = {"clip": f"{job.name}/000", "video": job.name, "identity": job.identity, "frames": 1,
                "expression_dim": 52}  # fmt: skip
        index.add({"video": job.name, "clips": [clip]})
    manifest = manifest_dict(Path("vox"), index.clips(), split_by, 0.3, 64, [], {}, {})
    person = {}
    for clip in manifest["clips"]:
        person.setdefault(clip["clip"].split("/")[0], set()).add(clip["split"])
    return person


def test_identity_level_2_keeps_every_voxceleb_person_in_one_split(tmp_path):
    root = _voxceleb(tmp_path / "vox2" / "dev" / "mp4")
    jobs = find_jobs([root], identity_level=2)
    assert len(jobs) == 40 * 3 * 2 and jobs[0] == Job(root / "id00000" / "yt000x0" / "00000.mp4",
                                                        "id00000/yt000x0/00000", "id00000")  # fmt: skip
    assert {j.identity for j in find_jobs([tmp_path / "vox2"], identity_level=2)} == {j.identity for j in jobs}
    person = _splits(jobs)
    assert all(len(s) == 1 for s in person.values())  # no identity in two splits
    assert {"train"} < set.union(*person.values())  # and there is a test split
    leaked = _splits(find_jobs([root], identity_level=1))  # the YouTube id as the identity: people leak
    assert any(len(s) == 2 for s in leaked.values())
    assert {j.identity for j in find_jobs([root], identity_level=0)} == {j.name.rsplit("/", 1)[1] for j in jobs}
    with pytest.raises(ValueError, match=r"--identity-level 4: id00000/yt000x0/00000.mp4 sits only 2 folder"):
        find_jobs([root], identity_level=4)


def test_vfhq_clips_grouped_by_person_through_links(tmp_path):
    flat = tmp_path / "VFHQ"
    for name in ("Clip+G0DGRma_p48+P0+C0+F11208-11383", "Clip+G0DGRma_p48+P0+C1+F200-300",
                 "Clip+G0DGRma_p48+P1+C0+F50-90", "Clip+zz9+P0+C0+F1-60"):  # fmt: skip
        write_frames(flat / name, [np.zeros((8, 8, 3), np.uint8)])
    linked = tmp_path / "by_person"
    for clip in flat.iterdir():  # what docs/data.md's loop does: <youtube id>+P<person>/<clip> -> the clip
        person = "+".join(clip.name.split("+")[1:3])
        (linked / person).mkdir(parents=True, exist_ok=True)
        os.symlink(clip, linked / person / clip.name)
    identities = {j.name.split("/")[1]: j.identity for j in find_jobs([linked])}
    assert identities == {"Clip+G0DGRma_p48+P0+C0+F11208-11383": "G0DGRma_p48+P0",
                          "Clip+G0DGRma_p48+P0+C1+F200-300": "G0DGRma_p48+P0",
                          "Clip+G0DGRma_p48+P1+C0+F50-90": "G0DGRma_p48+P1", "Clip+zz9+P0+C0+F1-60": "zz9+P0"}
    # the flat folder as the input: each clip is its own identity, so a person's clips can land in both splits
    assert {j.identity for j in find_jobs([flat])} == {p.name for p in flat.iterdir()}


def test_a_rerun_with_another_identity_level_relabels_without_redoing(tmp_path):
    fits = _deep3d_folders(tmp_path / "fits", ["alice/talk1", "alice/talk2", "bob/talk1"])
    cfg = PrepareConfig(size=16, min_frames=2, split_by="none")
    first = prepare([fits], tmp_path / "out", cfg, deep3d=True, progress=False)
    assert {c["identity"] for c in first.manifest["clips"]} == {"alice", "bob"}
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.json") if p.name != "manifest.json"}
    again = prepare([fits], tmp_path / "out", PrepareConfig(size=16, min_frames=2, split_by="none", identity_level=0),
                    deep3d=True, progress=False)  # fmt: skip
    assert again.done_before == 3
    assert [c["identity"] for c in again.manifest["clips"]] == ["talk1", "talk2", "talk1"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.json") if p.name != "manifest.json"} == \
        stamps  # fmt: skip


def test_an_interrupted_run_leaves_no_partial_clip_and_resumes(tmp_path, monkeypatch, capsys):
    from export3d.data.face_detect import FaceTracker

    videos = tmp_path / "videos"
    write_astronaut_frames(videos / "a", frames=10)
    write_astronaut_frames(videos / "b", frames=10)
    calls, track = [0], FaceTracker.track

    def interrupted(self, frame, time_ms=None):
        calls[0] += 1
        if calls[0] == 15:  # Ctrl-C in the middle of b
            raise KeyboardInterrupt
        return track(self, frame, time_ms)

    monkeypatch.setattr(FaceTracker, "track", interrupted)
    out = tmp_path / "clips"
    flags = [str(videos), "--out", str(out), "--size", str(SIZE), "--min-frames", "8", "--workers", "1",
             "--split-by", "none", "--no-progress"]  # fmt: skip
    assert main(flags) == 130
    assert "interrupted; finished videos are kept" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a", "manifest.json"]  # no trace of b
    assert [c["clip"] for c in json.loads((out / "manifest.json").read_text())["clips"]] == ["a/000"]
    monkeypatch.undo()
    run = prepare([videos], out, PrepareConfig(size=SIZE, min_frames=8, split_by="none"), progress=False)
    assert run.done_before == 1 and [c["clip"] for c in run.manifest["clips"]] == ["a/000", "b/000"]


def _square_or_die(job: int) -> int:
    """A job for the pool: dies (as a segfault would) on job 3."""
    if job == 3:
        os._exit(11)
    return job * job


def test_a_worker_that_dies_takes_only_its_own_job_down():
    results, crashed = {}, []
    run_jobs(range(6), _square_or_die, 2, lambda job, result: results.__setitem__(job, result),
             lambda job, reason: crashed.append((job, reason)))  # fmt: skip
    assert results == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert crashed == [(3, CRASH_REASON)]


def test_clip_arrays_are_streamed_into_the_npz_numpy_writes(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"expression": rng.random(52, dtype=np.float32), "camera": rng.random(25), "frame_index": np.int64(7 + t),
             "landmarks": rng.random((478, 2)), "crop": rng.random(3)} for t in range(3)]  # fmt: skip
    writer = ClipWriter(tmp_path / "clip")
    for row in rows:
        writer.add(np.zeros((16, 16, 3), np.uint8), row)
    writer.finish({"clip": "x"})
    params = read_npz(tmp_path / "clip" / "params.npz")
    for key, dtype in (("expression", np.float32), ("camera", np.float32), ("frame_index", np.int64),
                       ("landmarks", np.float32), ("crop", np.float32)):  # fmt: skip
        np.testing.assert_array_equal(params[key], np.stack([r[key] for r in rows]).astype(dtype))
        assert params[key].dtype == dtype
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == ["00000.png", "00001.png", "00002.png",
                                                                     "clip.json", "params.npz"]  # fmt: skip
    assert zipfile.ZipFile(tmp_path / "clip" / "params.npz").namelist()[0] == "expression.npy"
