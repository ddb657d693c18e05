"""Presets: named option sets, and a default preset per voice, in the embedded store.

A preset holds only the options it sets. Options for a conversion are resolved in layers:
``ConversionOptions`` defaults < the voice's default preset < the preset asked for < options given explicitly.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping

from ..errors import InputError
from ..options import ConversionOptions, parse_options
from .db import Database, dumps, loads
from .voices import NotFound, check_name

PRESET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}$")


def check_preset_name(name: str) -> str:
    if not isinstance(name, str) or not PRESET_RE.match(name):
        raise InputError(f"invalid preset name {name!r}: use letters, digits, spaces and ._+- (at most 64)")
    return name


class PresetStore:
    def __init__(self, db: Database):
        self.db = db

    def save(self, name: str, options: Mapping[str, Any]) -> dict:
        """Create or replace preset ``name`` with ``options`` (validated; file options are not allowed)."""
        check_preset_name(name)
        parse_options(options, allow_files=False)  # raises on unknown names, bad values
        clean = {k: parse_options({k: v}).to_dict()[k] for k, v in options.items()}
        now = time.time()
        with self.db.connect() as c:
            c.execute("INSERT INTO presets (name, options, created, updated) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (name) DO UPDATE SET options = excluded.options, updated = excluded.updated",
                      (name, dumps(clean), now, now))
        return self.get(name)

    def get(self, name: str) -> dict:
        with self.db.connect() as c:
            row = c.execute("SELECT name, options, created, updated FROM presets WHERE name = ?", (name,)).fetchone()
            voices = [r[0] for r in c.execute("SELECT voice FROM voice_presets WHERE preset = ? ORDER BY voice",
                                              (name,))]
        if row is None:
            raise NotFound(f"preset {name!r} not found")
        return {"name": row["name"], "options": loads(row["options"]), "default_for": voices,
                "created": row["created"], "updated": row["updated"]}

    def list(self) -> list[dict]:
        with self.db.connect() as c:
            names = [r[0] for r in c.execute("SELECT name FROM presets ORDER BY name COLLATE NOCASE")]
        return [self.get(n) for n in names]

    def delete(self, name: str) -> None:
        with self.db.connect() as c:
            if c.execute("DELETE FROM presets WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"preset {name!r} not found")

    def set_voice_default(self, voice: str, preset: str | None) -> None:
        """Make ``preset`` the default of ``voice`` (None: no default)."""
        check_name(voice)
        with self.db.connect() as c:
            if preset is None:
                c.execute("DELETE FROM voice_presets WHERE voice = ?", (voice,))
                return
            if c.execute("SELECT 1 FROM presets WHERE name = ?", (preset,)).fetchone() is None:
                raise NotFound(f"preset {preset!r} not found")
            c.execute("INSERT INTO voice_presets (voice, preset) VALUES (?, ?) "
                      "ON CONFLICT (voice) DO UPDATE SET preset = excluded.preset", (voice, preset))

    def voice_default(self, voice: str) -> str | None:
        with self.db.connect() as c:
            row = c.execute("SELECT preset FROM voice_presets WHERE voice = ?", (voice,)).fetchone()
        return row[0] if row else None

    def resolve(self, voice: str | None = None, preset: str | None = None,
                options: Mapping[str, Any] | None = None, allow_files: bool = True) -> ConversionOptions:
        """The options of one conversion: defaults < ``voice``'s default preset < ``preset`` < ``options``."""
        layers = []
        default = self.voice_default(voice) if voice else None
        if default:
            layers.append(self.get(default)["options"])
        if preset:
            layers.append(self.get(preset)["options"])
        result = ConversionOptions()
        for layer in layers:
            result = parse_options(layer, base=result)
        return parse_options(options or {}, base=result, allow_files=allow_files)
