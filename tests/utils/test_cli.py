"""The command lines' error helper: which failures are device errors, what is printed, which exit status."""

import argparse
import io

import pytest
import torch
from torch._inductor.exc import InductorError
from triton.runtime.errors import OutOfResources, PTXASError

from export3d.utils.cli import (
    EXIT_DEVICE_ERROR,
    EXIT_OK,
    EXIT_USER_ERROR,
    add_debug_flag,
    is_device_error,
    report_error,
    run_command,
    type_name,
)

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.25 GiB"


def _raised(exc: BaseException) -> BaseException:
    """``exc`` after a real raise, so it carries a traceback."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - returned to the test, which inspects it
        return caught


def _wrapped_oom() -> RuntimeError:
    try:
        raise torch.OutOfMemoryError(OOM_MESSAGE)
    except torch.OutOfMemoryError as inner:
        try:
            raise RuntimeError("the renderer failed") from inner
        except RuntimeError as outer:
            return outer


DEVICE_ERRORS = [
    torch.OutOfMemoryError(OOM_MESSAGE),
    OutOfResources(232448, 101376, "shared memory"),
    PTXASError("ptxas fatal: Unresolved extern function 'pow'"),
    InductorError(ValueError("triton compilation failed"), None),
    RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    _wrapped_oom(),
]
if hasattr(torch, "AcceleratorError"):
    DEVICE_ERRORS.append(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
USER_ERRORS = [ValueError("--source: image: no file at face.png"), FileNotFoundError("no such run"),
               RuntimeError("--out: rendered 3 of 5 frames; nothing was written"), KeyError("step")]  # fmt: skip


@pytest.mark.parametrize("exc", DEVICE_ERRORS, ids=lambda e: type(e).__name__)
def test_device_and_kernel_failures_are_recognised(exc):
    assert is_device_error(exc)


@pytest.mark.parametrize("exc", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_input_errors_and_bugs_are_not_device_errors(exc):
    assert not is_device_error(exc)


def test_exit_statuses_are_distinct_from_the_others_in_use():
    assert EXIT_OK == 0 and EXIT_USER_ERROR == 2
    assert EXIT_DEVICE_ERROR not in {0, 1, 2, 3, 130, 143}  # 1 Python, 3 train's divergence, 130 / 143 signals


def test_type_name_is_the_importable_name():
    assert type_name(ValueError("x")) == "ValueError"
    assert type_name(torch.OutOfMemoryError("x")) == "torch.OutOfMemoryError"
    assert type_name(OutOfResources(1, 0, "shared memory")) == "triton.runtime.errors.OutOfResources"


def test_a_device_error_is_reported_with_its_type_and_message():
    out = io.StringIO()
    assert report_error("export3d.x", torch.OutOfMemoryError(OOM_MESSAGE), file=out) == EXIT_DEVICE_ERROR
    lines = out.getvalue().splitlines()
    assert lines[0] == f"export3d.x: error: torch.OutOfMemoryError: {OOM_MESSAGE}"
    assert "device or kernel failure" in lines[1] and "--debug prints the full traceback" in lines[1]
    assert "Traceback" not in out.getvalue()


def test_a_user_error_is_one_line_with_its_message():
    out = io.StringIO()
    assert report_error("export3d.x", ValueError("--fps must be > 0"), file=out) == EXIT_USER_ERROR
    assert out.getvalue() == "export3d.x: error: --fps must be > 0\n"


@pytest.mark.parametrize("exc, status", [(torch.OutOfMemoryError(OOM_MESSAGE), EXIT_DEVICE_ERROR),
                                         (ValueError("--fps must be > 0"), EXIT_USER_ERROR)])  # fmt: skip
def test_debug_prints_the_traceback_before_the_message(exc, status):
    out = io.StringIO()
    assert report_error("export3d.x", _raised(exc), debug=True, file=out) == status
    text = out.getvalue()
    assert text.startswith("Traceback (most recent call last):") and "in _raised" in text
    assert text.index("Traceback") < text.index("export3d.x: error:")
    assert "--debug prints" not in text


def test_a_chained_device_error_shows_the_outer_exception_and_its_cause_under_debug():
    out = io.StringIO()
    assert report_error("export3d.x", _wrapped_oom(), debug=True, file=out) == EXIT_DEVICE_ERROR
    text = out.getvalue()
    assert "torch.OutOfMemoryError: CUDA out of memory" in text  # the cause, in the traceback
    assert "export3d.x: error: RuntimeError: the renderer failed" in text


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_debug_flag(parser)
    return parser.parse_args(argv)


def test_run_command_statuses(capsys):
    def fails_with(exc):
        def work(args):
            raise exc

        return work

    assert _parse([]).debug is False and _parse(["--debug"]).debug is True
    assert run_command("export3d.x", lambda args: {"done": True}, _parse([])) == EXIT_OK
    assert capsys.readouterr().err == ""
    # torch.OutOfMemoryError is a RuntimeError: a device error even where RuntimeError counts as a user error
    status = run_command("export3d.x", fails_with(torch.OutOfMemoryError(OOM_MESSAGE)), _parse([]),
                         user_errors=(ValueError, OSError, RuntimeError))  # fmt: skip
    assert status == EXIT_DEVICE_ERROR
    assert f"torch.OutOfMemoryError: {OOM_MESSAGE}" in capsys.readouterr().err
    status = run_command("export3d.x", fails_with(RuntimeError("bad checkpoint")), _parse([]),
                         user_errors=(ValueError, OSError, RuntimeError))  # fmt: skip
    assert status == EXIT_USER_ERROR and capsys.readouterr().err == "export3d.x: error: bad checkpoint\n"
    assert run_command("export3d.x", fails_with(OutOfResources(1, 0, "shared memory")), _parse(["--debug"])) == \
        EXIT_DEVICE_ERROR
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in work" in err
    assert "triton.runtime.errors.OutOfResources: out of resource: shared memory" in err


def test_run_command_lets_a_bug_propagate():
    def buggy(args):
        return {}["missing"]

    def runtime_error(args):
        raise RuntimeError("not a user error of this command")

    with pytest.raises(KeyError, match="missing"):
        run_command("export3d.x", buggy, _parse([]))
    with pytest.raises(RuntimeError, match="not a user error of this command"):
        run_command("export3d.x", runtime_error, _parse([]))  # the default user errors: ValueError, OSError
