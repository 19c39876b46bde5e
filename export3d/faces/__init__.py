"""MediaPipe's face detector, landmark and blendshape networks in PyTorch: differentiable, batched, any device.

``mesh = FaceMesh.from_bundle()``; ``landmarks, blendshapes = mesh(images)``: images ``[B, 3, S, S]`` in [-1, 1],
landmarks ``[B, 478, 3]`` in pixels of the input, blendshapes ``[B, 52]`` in :data:`BLENDSHAPE_NAMES` order;
``roi="detector"`` for MediaPipe's own still-image pipeline. The weights are read at run time from the installed
``face_landmarker.task``.

- :mod:`~export3d.faces.mesh`: :class:`FaceMesh`, the networks with MediaPipe's steps around them;
- :mod:`~export3d.faces.landmark_net`, :mod:`~export3d.faces.blendshape_net`, :mod:`~export3d.faces.detector_net`:
  the landmark CNN, the MLP-Mixer, BlazeFace;
- :mod:`~export3d.faces.detection` (anchors, decoding, the best face) and :mod:`~export3d.faces.roi` (MediaPipe's
  crops and the way back);
- :mod:`~export3d.faces.weights`: the bundle's weights into the modules, checked op by op;
- :mod:`~export3d.faces.tflite_reader`: a reader of TFLite flatbuffers (no dependency);
- :mod:`~export3d.faces.interpreter`: the same models run by TFLite (LiteRT), the oracle of the tests.

A network package like :mod:`export3d.model` (layer 1): imports only ``export3d.utils`` of the package.
docs/faces.md has the architecture, the normalisations and the measured agreement with TFLite and MediaPipe.
"""

from export3d.faces.blendshape_net import BLENDSHAPE_NAMES, SUBSET
from export3d.faces.mesh import ROI_MODES, FaceMesh, FaceMeshOutput, FacePrediction

__all__ = ["BLENDSHAPE_NAMES", "ROI_MODES", "SUBSET", "FaceMesh", "FaceMeshOutput", "FacePrediction"]
