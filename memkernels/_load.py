"""Loads the compiled extension, memkernels._C, with an error that says what
to do when it was built against another torch than the one imported."""

import importlib
import json

import torch

_REINSTALL = "reinstall memkernels against this torch: pip install --no-build-isolation --force-reinstall memkernels"


def torch_series(version: str) -> str:
    """'2.14' for '2.14.1+cu130'."""
    return ".".join(version.split("+")[0].split(".")[:2])


def check_torch_series(built: str, running: str) -> None:
    """Raises ImportError when the torch the extension was compiled against
    and the torch imported are of different series: torch's C++ ABI is only
    kept within a series."""
    if torch_series(built) != torch_series(running):
        raise ImportError(
            f"memkernels was compiled against torch {built}, but torch {running} is imported; "
            f"a build runs only with the torch series it was compiled against ({torch_series(built)}.x): "
            + _REINSTALL)


def load_extension():
    try:
        ext = importlib.import_module("memkernels._C")
    except ImportError as e:
        raise ImportError(
            f"memkernels could not load its compiled extension ({e}). With torch {torch.__version__} imported, "
            "the usual cause is a build for another torch series: " + _REINSTALL) from e
    check_torch_series(json.loads(ext.build_info())["torch"], torch.__version__)
    return ext
