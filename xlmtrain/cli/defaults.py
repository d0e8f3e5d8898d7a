"""Config nodes made from the dataclasses that own their defaults, stored in Hydra's ConfigStore.

The YAML starts from such a node (`defaults: - /batching_defaults@batching`) and restates none of its values, while
every field stays settable on the command line without `+` and listed by `--cfg job`: one home for each default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.core.config_store import ConfigStore


def store_defaults(name: str, cls: type) -> None:
    """Store the defaults of the dataclass `cls` (every field has one) as the config `name`; tuples as lists."""
    node: dict[str, Any] = {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in dataclasses.fields(cls)
    }
    ConfigStore.instance().store(name=name, node=node)
