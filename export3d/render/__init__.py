"""EG3D-style volume rendering of tri-planes: cameras, rays, sampling, decoding, compositing."""
