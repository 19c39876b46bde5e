"""``face_pipeline.photo_faces``: a still photo cut and measured exactly as ``prepare`` cuts and measures a frame.

The astronaut photo as a one-frame video through the video pipeline (``read_video_faces``, what ``prepare`` and
the driving video of ``animate`` run) must give the very crop, camera and blendshapes ``photo_faces`` gives for
the photo; two copies of the photo at two sizes must each be framed the same way.
"""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from export3d.data.face_pipeline import photo_faces, read_crop, read_video_faces, track_faces
from export3d.data.headpose import camera_angles
from export3d.data.landmarker import FaceLandmarker, canonical_mesh
from tests.data.faces import write_small_face_frames

SIZE = 128


@pytest.fixture(scope="module")
def landmarker():
    with FaceLandmarker() as lm:
        yield lm


def test_photo_faces_is_the_crop_prepare_makes_of_the_photo_as_a_frame(tmp_path, landmarker):
    photo = skimage.data.astronaut()
    Image.fromarray(photo).save((tmp_path / "video").mkdir() or tmp_path / "video" / "00000.png")
    mesh = canonical_mesh()
    faces = photo_faces(photo, landmarker, mesh, SIZE)
    assert len(faces) == 1
    face = faces[0]
    track, params, crops = read_video_faces(tmp_path / "video", landmarker, mesh, SIZE)
    assert len(crops) == 1 and track.detections == 1
    np.testing.assert_array_equal(face.crop, crops[0])
    np.testing.assert_allclose(face.params.boxes.corner, params.boxes.corner, atol=1e-9)
    np.testing.assert_allclose(face.params.boxes.side, params.boxes.side, atol=1e-9)
    np.testing.assert_allclose(face.camera, params.cameras[0], atol=1e-9)
    np.testing.assert_allclose(face.landmarks, params.landmarks[0], atol=1e-9)
    np.testing.assert_array_equal(face.blendshapes, params.expression[0])
    assert face.crop.shape == (SIZE, SIZE, 3) and face.crop.dtype == np.uint8
    assert np.linalg.norm(face.camera[[3, 7, 11]]) == pytest.approx(2.7, abs=0.3)  # on EG3D's camera sphere
    assert face.params.reprojection[0] < 0.03 * SIZE
    # the crop holds the face where its landmarks say: the landmarker on the crop itself agrees
    again = read_crop(face.crop, FaceLandmarker(video=False), mesh)
    assert np.linalg.norm(again.landmarks - face.landmarks, axis=1).mean() < 0.01 * SIZE


def test_two_copies_at_two_sizes_are_framed_alike_left_to_right(landmarker):
    from tests.data.test_face_detect import two_faces

    photo = skimage.data.astronaut()
    with FaceLandmarker(video=False) as lm:
        alone = lm.detect(photo)
    canvas, maps, _ = two_faces(photo, alone)  # the smaller copy on the left
    faces = photo_faces(canvas, landmarker, canonical_mesh(), SIZE)
    assert len(faces) == 2
    sides = [f.params.boxes.side[0] for f in faces]
    corners = [f.params.boxes.corner[0] for f in faces]
    assert corners[0][0] < corners[1][0]
    assert sides[1] / sides[0] == pytest.approx(maps[1][0, 0] / maps[0][0, 0], rel=0.03)  # crops scale with the face
    # the same face framed the same way: crop landmarks, camera and expression agree between the two copies
    gap = np.linalg.norm(faces[0].landmarks - faces[1].landmarks, axis=1)
    assert gap.mean() < 0.01 * SIZE, gap.mean()
    assert np.abs(camera_angles(faces[0].camera) - camera_angles(faces[1].camera)).max() < 2.0
    assert np.abs(faces[0].blendshapes - faces[1].blendshapes).mean() < 0.03


def test_no_face_no_photo_faces_and_bad_size_is_named(landmarker):
    assert photo_faces(np.full((300, 400, 3), 90, np.uint8), landmarker, canonical_mesh(), SIZE) == []
    with pytest.raises(ValueError, match="size must be >= 1"):
        photo_faces(skimage.data.astronaut(), landmarker, canonical_mesh(), 0)


def test_track_faces_finds_the_small_face_and_counts_its_detections(tmp_path, landmarker):
    folder = write_small_face_frames(tmp_path / "small", frames=8, blank=(3, 4))
    track = track_faces(folder, landmarker)
    np.testing.assert_array_equal(track.frame_index, [0, 1, 2, 5, 6, 7])
    assert track.frames_considered == 8 and track.dropped == 2
    assert track.detections == 1 + 2 + 1  # the first frame, the two faceless ones, the one after them
    assert track.landmarks.shape == (6, 478, 2) and track.blendshapes.shape == (6, 52)
