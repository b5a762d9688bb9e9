"""Your own network's class: imported by its path, its kind told, built with its options.

Importing this module is cheap (no torch): the launcher reads `IMPORT_ROOTS` from it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from genpar_models.errors import ConfigError

KINDS = ("vae", "gan")
VAE_METHODS = ("encode", "decode", "loss", "mean")
GAN_MODULES = ("generator", "discriminator")
SPEC_KEYS = ("name", "image_shape", "latent_dim", "options")

# sys.path entries the custom modules of this process were imported from: the launcher puts
# them on the torchrun ranks' PYTHONPATH (tasks/launcher.py), so ranks import the same module.
IMPORT_ROOTS: set[str] = set()


def is_custom_name(name: str) -> bool:
    """Whether model.name is an import path ("package.module:ClassName")."""
    return ":" in name


def _import_module(path: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing_top = e.name is not None and module_name.split(".")[0] == e.name.split(".")[0]
        cwd = os.getcwd()
        if missing_top and cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)  # like `python -m`: modules under the working directory
            try:
                return importlib.import_module(module_name)
            except ModuleNotFoundError:
                sys.path.remove(cwd)
        raise ConfigError(
            f"model.name={path!r}: cannot import module {module_name!r}: {e} (it must be "
            f"importable where genpar runs: an installed package, or on PYTHONPATH)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(
            f"model.name={path!r}: importing module {module_name!r} raised {type(e).__name__}: {e}"
        ) from e


def _record_root(module: Any, module_name: str) -> None:
    top = sys.modules.get(module_name.split(".")[0], module)
    file = getattr(top, "__file__", None)
    if file:
        here = Path(file).resolve().parent
        root = here.parent if Path(file).name == "__init__.py" else here
    else:  # a namespace package
        paths = list(getattr(top, "__path__", []))
        if not paths:
            return
        root = Path(paths[0]).resolve().parent
    if root.name not in ("site-packages", "dist-packages"):  # installed: found anyway
        IMPORT_ROOTS.add(str(root))


def import_class(path: str) -> type:
    """The class `path` ("package.module:ClassName") names.

    Raises:
        ConfigError: naming the path: the module does not import, has no such attribute, or
            it is not an nn.Module class.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.name={path!r}: an import path is 'package.module:ClassName'")
    module = _import_module(path, module_name)
    _record_root(module, module_name)
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"model.name={path!r}: module {module_name!r} has no {attr!r}")
    if not isinstance(cls, type):
        raise ConfigError(f"model.name={path!r}: {attr!r} is a {type(cls).__name__}, not a class")
    from torch import nn

    if not issubclass(cls, nn.Module):
        raise ConfigError(f"model.name={path!r}: {attr} is not a torch.nn.Module subclass")
    return cls


def kind_of(path: str, cls: type) -> str:
    """ "vae" or "gan": the class's `genpar_family`, else "vae" when it has `encode`.

    Raises:
        ConfigError: `genpar_family` names no kind, or a VAE-like class misses a method.
    """
    kind = getattr(cls, "genpar_family", None)
    if kind is None:
        kind = "vae" if callable(getattr(cls, "encode", None)) else "gan"
    if kind not in KINDS:
        raise ConfigError(
            f"model.name={path!r}: {cls.__name__}.genpar_family must be 'vae' or 'gan', "
            f"got {kind!r}"
        )
    if kind == "vae":
        missing = [m for m in VAE_METHODS if not callable(getattr(cls, m, None))]
        if missing:
            raise ConfigError(
                f"model.name={path!r}: {cls.__name__} is VAE-like but lacks the method(s) "
                f"{', '.join(missing)} (a VAE-like network defines "
                f"{', '.join(VAE_METHODS)}; see genpar_models/models/custom/)"
            )
    return kind


def _json_options(path: str, options: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        text = json.dumps(dict(options), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.options of {path!r}: {what} is not JSON: {e}") from None
    return json.loads(text)


def _check_signature(path: str, cls: type) -> None:
    """The constructor takes image_shape and latent_dim by keyword (or **kwargs)."""
    import inspect

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: let the call tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    takes = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    missing = [n for n in ("image_shape", "latent_dim") if n not in takes]
    if missing:
        raise ConfigError(
            f"model.name={path!r}: {cls.__name__}'s constructor takes no "
            f"{' or '.join(missing)} argument (genpar builds it as {cls.__name__}("
            f"image_shape=(C, H, W), latent_dim=model.latent_dim, **model.options))"
        )


def construct(path: str, image_shape: Sequence[int], latent_dim: int, options: Mapping) -> Any:
    """The user's class built with (image_shape, latent_dim, **options), and its options as
    stored (its `model_spec()` when it has one, else `options`).

    Raises:
        ConfigError: the class rejects the options (its own message, beside model.options).
    """
    cls = import_class(path)
    _check_signature(path, cls)
    shape = tuple(int(d) for d in image_shape)
    options = _json_options(path, options, "model.options")
    try:
        net = cls(image_shape=shape, latent_dim=int(latent_dim), **options)
    except Exception as e:  # noqa: BLE001 - the user's validation, whatever it raises
        raise ConfigError(
            f"model.options={options!r}: {path} rejected them: {type(e).__name__}: {e}"
        ) from e
    stored = options
    if callable(getattr(net, "model_spec", None)):
        own = net.model_spec()
        if not isinstance(own, Mapping):
            raise ConfigError(
                f"model.name={path!r}: {cls.__name__}.model_spec() must return a dict of its "
                f"options, got {type(own).__name__}"
            )
        stored = _json_options(path, own, f"{cls.__name__}.model_spec()")
    return net, stored


BUNDLE_MAX_BYTES = 20 * 2**20  # a bigger package is left to the serving environment


def source_of(path: str) -> Path | None:
    """The file or package directory holding the top-level module of `path`'s class, for
    bundling with a served model; None when it is installed (site-packages), not a file, or
    a package over BUNDLE_MAX_BYTES."""
    import_class(path)  # imported (and found) as training found it
    top = sys.modules[path.partition(":")[0].split(".")[0]]
    file = getattr(top, "__file__", None)
    if not file:
        return None
    source = Path(file).resolve()
    source = source.parent if source.name == "__init__.py" else source
    if any(part in ("site-packages", "dist-packages") for part in source.parts):
        return None
    if source.is_dir():
        size = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
        if size > BUNDLE_MAX_BYTES:
            return None
    return source


def network_lineage(model_name: str) -> dict[str, str]:
    """{"network_code": ...} for your own network, {} for a family: the installed
    distribution's name and version, or a sha256 of the top-level module's .py sources, so
    that the nightly retrain sees an edited network as changed code (util/lineage.py records
    genpar's own code; this is the user's)."""
    if not is_custom_name(model_name):
        return {}
    import hashlib
    from importlib import metadata

    source = source_of(model_name)
    top = model_name.partition(":")[0].split(".")[0]
    if source is None:  # installed (or too big to bundle): its distribution's version
        dists = metadata.packages_distributions().get(top) or []
        versions = sorted(f"{d}=={metadata.version(d)}" for d in dists)
        return {"network_code": ",".join(versions) or f"{top} (no distribution found)"}
    files = sorted(source.rglob("*.py")) if source.is_dir() else [source]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(source.parent)).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return {"network_code": digest.hexdigest()[:16]}
