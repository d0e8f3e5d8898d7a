"""Where the Hydra config tree lives, for every CLI entry point."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The config tree: `xlmtrain/conf` inside an installed wheel, else `<checkout>/conf`.

    Hydra needs an absolute path here: a relative `config_path` in a non-`__main__` module silently
    becomes a `pkg://` path that does not exist in a checkout.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "xlmtrain.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"xlmtrain config tree not found in {package / 'conf'} or {package.parent / 'conf'}")
