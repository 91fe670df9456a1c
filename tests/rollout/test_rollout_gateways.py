"""The share in force, as `lane rollout` reads it from a running gateway (``GET /lane/coloring``).

A real ``lane gateway`` process, alone and under the ``--workers`` supervisor: the share reported is
the file's after each reload `rollout.share_edit` and ``POST /lane/reload`` make, and a rejected
reload keeps reporting the share still in force. The gateway's upstreams are never called.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from rollout.share_edit import write_share
from tests.support.processes import REPO, free_port, lane_process


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _reload(admin: str) -> int:
    request = urllib.request.Request(admin + "/lane/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _share(admin: str) -> int:
    view = _get(admin + "/lane/coloring")
    assert isinstance(view, dict)
    (rule,) = [r for r in view["rules"] if r["name"] == "gray-share"]
    assert rule["lane"] == "gray" and rule["sticky"] is True
    return int(rule["percent"])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_gateway_reports_the_share_it_applies(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "lane.yaml"
    config.write_text((REPO / "examples" / "rollout.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    listen = f"127.0.0.1:{free_port()}"  # the workers share a fixed port
    with lane_process(tmp_path, "gw", "gateway", "--config", str(config), "--listen", listen,
                      "--admin", "127.0.0.1:0", "--workers", workers, ready_timeout=60) as gw:
        admin = gw.url("admin")
        assert _share(admin) == 0
        write_share(config, "gray", None, 25)
        assert _share(admin) == 0  # the file alone changes nothing in force
        assert _reload(admin) == 200
        assert _share(admin) == 25
        config.write_text(config.read_text().replace("entry: a", "entry: nowhere"))  # a broken edit by hand
        assert _reload(admin) == 400
        assert _share(admin) == 25  # still what it applies

