"""Reading a driving video: the signals prepare would measure, frame by frame, with faceless frames held."""

import numpy as np
import pytest

from export3d.animation.driver import hold_nearest, read_driver, scaled_filters, track_rows
from tests.data.faces import write_astronaut_frames


def test_faceless_frames_take_the_nearest_face_and_the_earlier_on_a_tie():
    rows = [None, 10.0, None, None, 40.0, None, None, None, 80.0, None]  # a leading, an even, an odd, a trailing gap
    held = list(hold_nearest(iter(None if r is None else np.array([r]) for r in rows)))
    assert [float(r[0]) for r, _ in held] == [10, 10, 10, 40, 40, 40, 40, 80, 80, 80]  # frame 6: a tie, the earlier
    assert [found for _, found in held] == [r is not None for r in rows]
    with pytest.raises(ValueError, match="no face found in any of the 3 frames"):
        list(hold_nearest(iter([None, None, None])))


def test_scaled_filters_divides_every_cutoff_and_zero_turns_them_off():
    base, twice = scaled_filters(1.0), scaled_filters(2.0)
    assert twice.rotation.min_cutoff == base.rotation.min_cutoff / 2
    assert twice.expression.beta == base.expression.beta / 2
    assert scaled_filters(0.0) is None
    with pytest.raises(ValueError, match="--smooth"):
        scaled_filters(-1.0)


@pytest.fixture(scope="module")
def tools():
    from export3d.data.landmarker import FaceLandmarker, canonical_mesh

    with FaceLandmarker() as landmarker:
        yield landmarker, canonical_mesh()


def test_signals_are_prepares_unsmoothed_crop_and_camera_and_faceless_frames_are_held(tools, tmp_path):
    from export3d.data.face_pipeline import clip_parameters, track_faces

    folder = write_astronaut_frames(tmp_path / "clip", frames=8, blank=(3,))
    landmarker, mesh = tools
    rows = list(track_rows(folder, landmarker, mesh, 64))
    found = np.array([r is not None for r in rows])
    assert found.tolist() == [True, True, True, False, True, True, True, True]
    table = np.stack([r for r in rows if r is not None])  # [7, 80]: blendshapes, camera, crop
    params = clip_parameters(track_faces(folder, landmarker), mesh, 64, smooth_sigma=0.0)  # prepare's two-pass path
    np.testing.assert_allclose(table[:, 52:77], params.cameras, atol=1e-6)
    np.testing.assert_allclose(table[:, :52], params.expression, atol=1e-6)
    np.testing.assert_allclose(table[:, 77:79], params.boxes.corner, atol=1e-6)
    signal = read_driver(folder, landmarker, mesh, 64, smooth=0.0)
    assert signal.frames == 8 and signal.held == 1
    np.testing.assert_array_equal(signal.camera[3], signal.camera[2])  # held from its nearest (earlier on a tie)
