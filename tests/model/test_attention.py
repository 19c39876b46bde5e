"""The xformers probe of the attention helper: a missing xformers is quiet, a broken one is a warning naming the error.

The probe only runs for CUDA tensors; here the import is replaced by one that raises, and ``select_backend`` gets a
stand-in whose ``is_cuda`` is True (it reads nothing else of the tensor), so no GPU is needed.
"""

import builtins
import logging
import types
import warnings

import pytest

from export3d.model import attention as attention_mod

CUDA_LIKE = types.SimpleNamespace(is_cuda=True)


@pytest.fixture
def import_of_xformers(monkeypatch):
    """``set_error(exc)``: from now on ``import xformers...`` raises ``exc``; the cached probe result is reset."""
    real_import = builtins.__import__
    error: list[BaseException] = []

    def fake_import(name, *args, **kwargs):
        if name == "xformers" or name.startswith("xformers."):
            raise error[0]
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(attention_mod, "_xformers_ok", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    return error.append


@pytest.mark.parametrize("exc", [OSError("libcudart.so.12: cannot open shared object file: No such file or directory"),
                                 ImportError("undefined symbol: _ZN3c104cuda9SetDeviceEi"),
                                 ModuleNotFoundError("No module named 'triton'", name="triton"),
                                 RuntimeError("xformers was built for torch 2.3.0+cu121")])  # fmt: skip
def test_a_broken_xformers_is_a_warning_that_names_the_error_and_the_backend_used(import_of_xformers, exc):
    import_of_xformers(exc)
    with pytest.warns(RuntimeWarning) as caught:
        assert attention_mod.select_backend(CUDA_LIKE) == "sdpa"
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"({type(exc).__name__}: {exc})" in message, message
    assert "scaled_dot_product_attention ('sdpa') instead of xformers" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the result is cached: one warning per process, not one per call
        assert attention_mod.select_backend(CUDA_LIKE) == "sdpa"
    with pytest.raises(RuntimeError, match="importable xformers"):
        attention_mod.select_backend(CUDA_LIKE, "xformers")


def test_xformers_not_installed_is_logged_at_info_without_a_warning(import_of_xformers, caplog):
    import_of_xformers(ModuleNotFoundError("No module named 'xformers'", name="xformers"))
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger=attention_mod.__name__):
        warnings.simplefilter("error")
        assert attention_mod.select_backend(CUDA_LIKE) == "sdpa"
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "xformers is not installed" in caplog.records[0].getMessage()


def test_cpu_tensors_never_probe_xformers(import_of_xformers):
    import_of_xformers(AssertionError("CPU attention must not import xformers"))
    assert attention_mod.select_backend(types.SimpleNamespace(is_cuda=False)) == "sdpa"
    assert attention_mod._xformers_ok is None
