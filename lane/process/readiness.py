"""Telling whoever started a proxy that it is ready, and where it listens.

A proxy started on port 0 (tests, `lane demo`) only knows its ports once bound. It logs one line
per listener and, with ``--ready-file PATH``, writes ``{"pid": ..., "listeners": {name: "host:port"}}``
atomically (write then rename), so a supervisor can poll for the file instead of parsing logs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["announce", "write_json_atomically"]


def write_json_atomically(path: str | Path, document: object) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def announce(command: str, bound: Mapping[str, object], ready_file: str | None) -> None:
    listeners = {name: str(address) for name, address in bound.items()}
    print(f"lane {command} ready: " + " ".join(f"{k}=http://{v}" for k, v in listeners.items()), file=sys.stderr,
          flush=True)
    if ready_file:
        write_json_atomically(ready_file, {"pid": os.getpid(), "listeners": listeners})
