"""Each default is written once: in its section's dataclass,
never restated by a YAML file of conf/."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from courier.config import CONF_DIR, CourierConfig, from_dict


def restated_defaults(cls: type, data: Mapping[str, Any], file: str, path: str = "") -> list[str]:
    """``file: key = value`` for every key of ``data`` whose
    value is ``cls``'s default, nested sections included.

    Values are compared after the config's own typing (``from_dict``), so ``1.0e-4`` restates
    ``1e-4`` and a list restates a tuple default.
    """
    hints = typing.get_type_hints(cls)
    defaults, built = cls(), from_dict(cls, data, path)
    found = []
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            found += restated_defaults(hints[name], value, file, key)
        elif getattr(built, name) == getattr(defaults, name):
            found.append(f"{file}: {key} = {value!r}")
    return found


def restated_in(conf_dir: Path) -> list[str]:
    """Restated defaults of every YAML file of ``conf_dir`` (base.yaml and each profile)."""
    found = []
    for path in sorted(conf_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        found += restated_defaults(CourierConfig, data, path.name)
    return found


def test_no_file_of_conf_restates_a_dataclass_default():
    found = restated_in(CONF_DIR)
    assert not found, (
        "these keys restate the dataclass default (courier/config/); delete them from the YAML: "
        + "; ".join(found)
    )


@pytest.mark.parametrize(
    ("file", "planted", "expected"),
    [
        ("base.yaml", "tables:\n  database: courier\n", "base.yaml: tables.database = 'courier'"),
        ("local.yaml", "train:\n  lr: 1.0e-4\n", "local.yaml: train.lr = 0.0001"),
        ("cluster.example.yaml", "spark:\n  conf: {}\n", "cluster.example.yaml: spark.conf = {}"),
    ],
)
def test_a_planted_restated_default_is_named_with_its_file_and_key(
    tmp_path, file, planted, expected
):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    data = yaml.safe_load((conf / file).read_text()) or {}
    for section, values in yaml.safe_load(planted).items():
        data[section] = {**(data.get(section) or {}), **values}
    (conf / file).write_text(yaml.safe_dump(data))
    assert restated_in(conf) == [expected]
