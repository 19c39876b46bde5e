"""The MediaPipe landmarker wrapper: a landmarker left open is closed at exit without MediaPipe's shutdown error."""

import subprocess
import sys

SCRIPT = """
import skimage.data
from export3d.data.landmarker import FaceLandmarker
face = FaceLandmarker(video=False).detect(skimage.data.astronaut())  # never closed
print("face" if face is not None else "no face")
"""


def test_a_landmarker_left_open_exits_cleanly():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "face"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
