"""Kaggle credentials: which ones the kaggle package will use, the steps to set them up, and the scrubbing
that keeps every secret out of what is printed, raised or stored.

Found the way the package finds them, without importing it (pipeline/kaggle/client.py is the only module
that imports `kaggle`): a missing set-up fails before any Kaggle call, or any training, starts.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

SETUP_STEPS = """To set up Kaggle credentials:
  1. Sign in at https://www.kaggle.com, open https://www.kaggle.com/settings/api and click "Generate New Token"
     (or "Create Legacy API Key", which downloads kaggle.json).
  2. Either save the token:    mkdir -p ~/.kaggle && printf '%s' 'TOKEN' > ~/.kaggle/access_token
                                chmod 600 ~/.kaggle/access_token
     or export it:             export KAGGLE_API_TOKEN=TOKEN
     or place kaggle.json:     mkdir -p ~/.kaggle && mv ~/Downloads/kaggle.json ~/.kaggle/
                                chmod 600 ~/.kaggle/kaggle.json
     (or export KAGGLE_USERNAME and KAGGLE_KEY; KAGGLE_CONFIG_DIR moves the kaggle.json folder)
  3. Accept the competition's rules on its Kaggle page (Data tab), then run the command again."""


@dataclass(frozen=True)
class Credentials:
    source: str  # where they come from, for messages (never the value)
    secrets: tuple[str, ...]  # strings that must never be shown, for `scrub`


def config_dir() -> Path:
    """The folder of kaggle.json, chosen exactly as the kaggle package chooses it."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path(os.path.expanduser("~"))
    legacy = home / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return legacy


def find_credentials() -> Credentials:
    """Which credentials the kaggle package will use; ValueError with the set-up steps when there are none."""
    home = Path(os.path.expanduser("~"))
    secrets: list[str] = []
    sources: list[str] = []
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    if token:
        if Path(token).is_file():
            _warn_if_readable(Path(token))
            secrets.append(Path(token).read_text().strip())
            sources.append(f"the file named by KAGGLE_API_TOKEN ({token})")
        else:
            secrets.append(token)
            sources.append("KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        path = home / ".kaggle" / name
        if path.is_file() and path.read_text().strip():
            _warn_if_readable(path)
            secrets.append(path.read_text().strip())
            sources.append(str(path))
    config = config_dir() / "kaggle.json"
    if config.is_file():
        _warn_if_readable(config)
        try:
            data = json.loads(config.read_text() or "{}")
        except json.JSONDecodeError as error:
            raise UserError(f"{config} is not valid JSON ({error.msg} at line {error.lineno}); download it again from "
                             "https://www.kaggle.com/settings/api") from None
        if data.get("key"):
            secrets.append(str(data["key"]))
            secrets.append(_basic(str(data.get("username", "")), str(data["key"])))
            sources.append(str(config))
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        secrets += [os.environ["KAGGLE_KEY"], _basic(os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"])]
        sources.append("KAGGLE_USERNAME/KAGGLE_KEY")
    oauth = home / ".kaggle" / "credentials.json"  # written by `kaggle auth login`
    if oauth.is_file():
        with contextlib.suppress(ValueError, OSError):
            data = json.loads(oauth.read_text())
            secrets += [str(data[k]) for k in ("refresh_token", "access_token") if data.get(k)]
            if data.get("refresh_token"):
                sources.append(str(oauth))
    if not sources:
        raise UserError(f"no Kaggle credentials found. {SETUP_STEPS}")
    secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)  # longest first: no partial blanking
    return Credentials(source=sources[0], secrets=tuple(secrets))


def _basic(username: str, key: str) -> str:
    return base64.b64encode(f"{username}:{key}".encode()).decode()


def _warn_if_readable(path: Path) -> None:
    if os.name != "nt" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} is readable by other users of this machine; run `chmod 600 {path}`", file=sys.stderr)


def scrub(text: str, credentials: Credentials) -> str:
    """`text` with every secret of `credentials` blanked out (before it is printed, raised or stored)."""
    for secret in credentials.secrets:
        text = text.replace(secret, "***")
    return text


class ScrubbingStream(io.TextIOBase):
    """Forwards what the package prints, with credentials blanked out."""

    def __init__(self, stream, credentials: Credentials) -> None:
        self._stream, self._credentials = stream, credentials

    def write(self, text: str) -> int:
        self._stream.write(scrub(text, self._credentials))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()
