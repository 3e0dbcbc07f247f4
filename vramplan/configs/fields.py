"""Reading one config file: parse it (a one-line error naming file and line), then walk its fields.

`FieldReader` holds one mapping (a YAML or JSON file, or a nested section of one) and records which fields a
format's reader used: every field a reader does not take is listed as ignored. A reader maps a field to plan
options (`set`), or refuses it (`refuse`) when the field changes memory in a way the estimator does not model:
an error that names the field, never a silent default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vramplan.errors import ConfigReadError  # noqa: F401  (vramplan.configs re-exports it)


def load_mapping(path: Path) -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping. Malformed text: one line naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigReadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigReadError(f"{path}: not a text file (UTF-8 YAML or JSON)") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigReadError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigReadError(f"{path}{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigReadError(f"{path}: expected a mapping of field: value at the top, got {type(data).__name__}")
    return data


class FieldReader:
    """The fields of one mapping; `prefix` names a nested section in messages (`fsdp_config.`)."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str = "") -> None:
        self.data, self.source, self.prefix = data, source, prefix
        self.used: set[str] = set()
        self.options: dict[str, Any] = {}
        self.origin: dict[str, str] = {}  # plan field -> the config field it came from
        self.notes: list[str] = []
        self.model: str | None = None
        self.followed: list[str] = []  # files this one points to and that were read with it
        self.nested_ignored: list[str] = []

    def take(self, key: str, default: Any = None) -> Any:
        """The field's value (None/absent: `default`); the field counts as used."""
        self.used.add(key)
        value = self.data.get(key)
        return default if value is None else value

    def take_model(self, key: str) -> str | None:
        """The model field (a hub id, preset or path): a string, or None when absent."""
        value = self.take(key)
        if value is not None and not isinstance(value, str):
            raise ConfigReadError(f"{self.source}: {self.prefix}{key}: expected a model name or path, got {value!r}")
        return value

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def set(self, field: str, value: Any, key: str) -> None:
        """Plan option `field` comes from config field `key` (None: nothing set)."""
        if value is None:
            return
        self.options[field] = value
        given = self.data.get(key.split(".")[0]) is not None
        self.origin[field] = self.prefix + key + ("" if given else " (default)")

    def fixed(self, field: str, value: Any, why: str) -> None:
        """Plan option `field` that the format itself decides (`why` says how), not one of its fields."""
        self.options[field] = value
        self.origin[field] = why

    def note(self, text: str) -> None:
        self.notes.append(text)

    def refuse(self, key: str, why: str) -> None:
        raise ConfigReadError(f"{self.source}: {self.prefix}{key}: {why}; vramplan cannot model it yet "
                              "(remove it, or set it off, to estimate without it)")

    def refuse_if_on(self, key: str, why: str) -> None:
        """Refuse the field when it is set to anything but off (absent, null, false, 0, '', [] or 'none')."""
        value = self.take(key)
        if value not in (None, False, 0, "", [], {}) and not (isinstance(value, str) and value.lower() in
                                                               ("none", "false", "no", "disabled")):
            self.refuse(key, why)

    def bad_value(self, key: str, value: Any, choices: list[str] | tuple[str, ...]) -> ConfigReadError:
        from vramplan.errors import did_you_mean

        shown = ", ".join(choices)
        return ConfigReadError(f"{self.source}: {self.prefix}{key}: {value!r} is not modelled; vramplan reads "
                               f"{shown}{did_you_mean(str(value), choices)}")

    def section(self, key: str) -> FieldReader | None:
        """A nested mapping as its own reader (its unused fields are listed as `key.field`), or None."""
        value = self.take(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ConfigReadError(f"{self.source}: {self.prefix}{key}: expected a mapping, got {value!r}")
        return FieldReader(value, self.source, f"{self.prefix}{key}.")

    def absorb(self, other: FieldReader, via: str = "") -> None:
        """Take a nested reader's options, notes and ignored fields (a section, or a file that field `via`
        names: its fields are listed as `via.field`)."""
        for field, value in other.options.items():
            self.options.setdefault(field, value)
            self.origin.setdefault(field, (via + "." if via else "") + other.origin[field])
        self.notes += other.notes
        self.followed += other.followed
        self.nested_ignored += [(via + "." if via else "") + name for name in other.ignored()]
        self.model = self.model or other.model

    def ignored(self) -> list[str]:
        return [self.prefix + k for k in self.data if k not in self.used] + self.nested_ignored


def as_bool(reader: FieldReader, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected true or false, got {value!r}")


def as_int(reader: FieldReader, key: str, value: Any, auto: bool = False) -> int | None:
    """An integer field (None: absent); with `auto`, DeepSpeed's "auto" (filled from the trainer) gives None."""
    if value is None or (auto and value == "auto"):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected an integer, got {value!r}")
    return value


def as_float(reader: FieldReader, key: str, value: Any) -> float | None:
    """A number field (None: absent)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected a number, got {value!r}")
    return float(value)


def follow(reader: FieldReader, key: str, base: Path) -> Path | dict | None:
    """A field that names another file (DeepSpeed JSON, fsdp_config JSON) or holds it inline: the path
    (relative to the config's folder, else to the working directory) or the dict."""
    value = reader.take(key)
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: expected a file path, got {value!r}")
    for candidate in (base / value, Path(value)):
        if candidate.is_file():
            return candidate
    raise ConfigReadError(f"{reader.source}: {reader.prefix}{key}: file {value} not found (looked in {base} "
                          "and the working directory)")
