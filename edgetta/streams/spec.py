"""Reading one YAML mapping of a stream's configuration, key by key, with errors that name the key.

Every value is checked where it is read: ``SpecReader(spec, "streams[cam].source")`` then ``.number("fps")``
raises :class:`ConfigError` ``streams[cam].source.fps: must be a number > 0, got 'fast'``. ``.finish()``
refuses keys nobody read, listing the allowed ones, so a misspelt key never passes silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgetta.errors import ConfigError

_MISSING = object()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SpecReader:
    """Typed access to a mapping of settings at ``where`` (e.g. ``streams[cam].source``)."""

    def __init__(self, spec: Any, where: str, allowed: Iterable[str] = ()) -> None:
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: must be a mapping of keys to values, got {_shown(spec)}")
        bad = [k for k in spec if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where}: keys must be strings, got {_shown(bad[0])}")
        self.spec = dict(spec)
        self.where = where
        self.allowed: list[str] = list(allowed)

    def key(self, name: str) -> str:
        """The full name of ``name`` for messages: ``streams[cam].source.name``."""
        return f"{self.where}.{name}"

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {problem}")

    def given(self, name: str) -> bool:
        """``name`` is written in the mapping, possibly as null (which then means "off")."""
        self._allow(name)
        return name in self.spec

    def has(self, name: str) -> bool:
        self._allow(name)
        return self.spec.get(name) is not None

    def raw(self, name: str, default: Any = None) -> Any:
        self._allow(name)
        value = self.spec.get(name)
        return default if value is None else value

    def _allow(self, name: str) -> None:
        if name not in self.allowed:
            self.allowed.append(name)

    def required(self, name: str, meaning: str) -> Any:
        self._allow(name)
        if self.spec.get(name) is None:
            raise ConfigError(f"{self.where}: missing key '{name}' ({meaning})")
        return self.spec[name]

    def string(self, name: str, default: Any = _MISSING, *, meaning: str = "a text value") -> Any:
        if default is not _MISSING and not self.has(name):
            return default
        value = self.required(name, meaning)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be {meaning}, got {_shown(value)}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None) -> str | None:
        if not self.has(name):
            return default
        value = self.spec[name]
        if not isinstance(value, str) or value.lower() not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {_shown(value)}")
        return value.lower()

    def boolean(self, name: str, default: bool) -> bool:
        if not self.has(name):
            return default
        value = self.spec[name]
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_shown(value)}")
        return value

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        integer: bool = False,
        meaning: str = "",
    ) -> Any:
        if default is not _MISSING and not self.has(name):
            return default
        value = self.required(name, meaning or "a number")
        return self.check_number(
            name, value, minimum=minimum, maximum=maximum, above=above, integer=integer, meaning=meaning
        )

    def check_number(
        self,
        name: str,
        value: Any,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        integer: bool = False,
        meaning: str = "",
    ) -> Any:
        kind = "a whole number" if integer else "a number"
        limits = []
        if above is not None:
            limits.append(f"> {above:g}")
        if minimum is not None:
            limits.append(f">= {minimum:g}")
        if maximum is not None:
            limits.append(f"<= {maximum:g}")
        wanted = " ".join([kind, " and ".join(limits)]).strip() + (f" ({meaning})" if meaning else "")
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise self.error(name, f"must be {wanted}, got {_shown(value)}")
        if value != value:  # NaN
            raise self.error(name, f"must be {wanted}, got NaN")
        if (
            (above is not None and not value > above)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)
        ):
            raise self.error(name, f"must be {wanted}, got {_shown(value)}")
        return int(value) if integer else float(value)

    def numbers(self, name: str, default: Any, *, length: int | None = None, meaning: str = "numbers") -> Any:
        """A list of numbers (a single number becomes a one-element list)."""
        if not self.has(name):
            return default
        value = self.spec[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise self.error(name, f"must be a list of {meaning}, got {_shown(value)}")
        out = [self.check_number(name, v) for v in value]
        if length is not None and len(out) != length:
            raise self.error(name, f"must be a list of {length} {meaning}, got {_shown(value)}")
        return out

    def sub(self, name: str) -> SpecReader:
        """The nested mapping at ``name`` (empty when absent)."""
        return SpecReader(self.raw(name, {}), self.key(name))

    def finish(self) -> None:
        """Refuse every key that was not read, naming it and the allowed keys."""
        unknown = [k for k in self.spec if k not in self.allowed]
        if unknown:
            allowed = ", ".join(sorted(self.allowed)) or "none"
            raise ConfigError(f"{self.key(unknown[0])}: unknown key; allowed here: {allowed}")
