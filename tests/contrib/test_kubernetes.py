"""
C{contrib/kubernetes/}: the manifests validate offline against the Kubernetes
schemas (C{kubernetes-validate}), and their numbers agree with each other and with
C{txflip run}'s own options.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from tests.conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

MANIFEST = ROOT / "contrib" / "kubernetes" / "flipecho.yaml"
VERSIONS = ("1.30.0", "1.37.0")


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def container() -> dict[str, Any]:
    [deployment] = [d for d in documents() if d["kind"] == "Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [one] = spec["containers"]
    return {**one, "grace": spec["terminationGracePeriodSeconds"]}


def runOptions(command: list[str]) -> argparse.Namespace:
    from txflip.run._cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(command[1:])


@pytest.mark.parametrize("version", VERSIONS)
def test_manifestsValidate(version: str) -> None:
    kinds = []
    for document in documents():
        kubernetes_validate.validate(document, version, strict=True)
        kinds.append(document["kind"])
    assert sorted(kinds) == ["Deployment", "PersistentVolumeClaim", "Service"]


def test_aBrokenManifestDoesNot() -> None:
    """
    The validator does see mistakes (a misspelt field, with strict).
    """
    [deployment] = [d for d in documents() if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_theStopFitsTheGracePeriod() -> None:
    """
    terminationGracePeriodSeconds (counted from the preStop hook) covers the
    preStop's wait and txflip run's --drain-timeout; the workers' own drain ends
    before txflip run would kill them.
    """
    c = container()
    options = runOptions(c["command"])
    preStop = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    assert "kill -USR2 1" in preStop
    sleep = int(re.search(r"sleep (\d+)", preStop).group(1))  # type: ignore[union-attr]
    assert c["grace"] >= sleep + options.drain_timeout + 1
    env = {e["name"]: e["value"] for e in c["env"]}
    assert float(env["DRAIN_TIMEOUT"]) < options.drain_timeout
    serve = (MANIFEST.parent / "serve").read_text()
    assert "--drain-timeout" in serve and "DRAIN_TIMEOUT" in serve


def test_probesAskTheAdminEndpoint() -> None:
    c = container()
    options = runOptions(c["command"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert options.admin == f"tcp:{ports['admin']}"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "admin"}
    assert options.control.startswith("/run/txflip/")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/run/txflip", "/srv/app"} <= mounts
    assert options.command[-1].startswith("/srv/app/")
