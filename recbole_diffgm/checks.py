"""Checks of settings that every layer may import (it imports only ``errors``): a bad value raises ``InputError``
naming the key and what it accepts."""

from __future__ import annotations

from recbole_diffgm.errors import InputError


def config_choice(config, key: str, options: tuple[str, ...]) -> str:
    """``config[key]``, which must be one of ``options``."""
    if config[key] not in options:
        raise InputError(f"unknown {key} '{config[key]}'; choose one of {', '.join(options)}")
    return config[key]


def parse_duration(value, key: str) -> float | None:
    """Seconds from ``value``: a number of seconds, or text with a unit (``90s``, ``60m``, ``1.5h``); ``None`` stays
    ``None``. ``key`` names the setting in the error."""
    if value is None:
        return None
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise InputError(f"{key} '{value}': give a positive duration in seconds or with a unit, e.g. 3600, 60m, 1.5h")
    return seconds
