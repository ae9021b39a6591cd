"""The sandbox's outside world on loopback: a FaR simulator and two mailbox-operator simulators.

Each listens with real HTTPS and requires a client certificate from the development CA. FaR's registry
names the operators' service addresses, so a relay routes by what FaR says, as in production.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from formedlare.https_server import RunningServer, TlsFiles, serve_in_thread
from formedlare.mm import TrustPolicy
from kanalvaxel.sandbox.far_simulator import FarSimulator, Registry, default_registry, load_registry
from kanalvaxel.sandbox.operator_simulator import OperatorSimulator

log = logging.getLogger(__name__)

#: Operator keys in the FaR registry -> the development TLS certificate each simulator presents.
OPERATOR_CERTS = {"kivra": "operator-kivra", "mmp": "operator-mmp"}


@dataclass
class SandboxWorld:
    far: FarSimulator
    far_url: str
    operators: dict[str, OperatorSimulator]
    operator_urls: dict[str, str]
    servers: list[RunningServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def describe(self) -> dict[str, object]:
        return {
            "far_url": self.far_url,
            "operators": {
                key: {"url": url, "name": self.operators[key].name} for key, url in self.operator_urls.items()
            },
        }


def start_world(
    certs: Path,
    *,
    registry: Registry | Path | None = None,
    far_port: int = 0,
    operator_ports: dict[str, int] | None = None,
    store_dir: Path | None = None,
) -> SandboxWorld:
    """Start the simulators (ephemeral ports unless given). The caller must `stop()` the world.
    `store_dir`: the operators also write what they accept there, as JSON files people can read."""
    reg = (
        load_registry(registry)
        if isinstance(registry, Path)
        else (registry if registry is not None else default_registry())
    )
    trust = TrustPolicy.from_pem_files(certs / "ca.pem")
    ports = operator_ports or {}
    servers: list[RunningServer] = []
    try:
        far = FarSimulator(reg)
        operators: dict[str, OperatorSimulator] = {}
        urls: dict[str, str] = {}
        for key, op in reg.operators.items():
            sim = OperatorSimulator(op.name, op.id, trust, store_dir=store_dir)
            cert = OPERATOR_CERTS.get(key, "server")
            server = serve_in_thread(
                sim.app,
                TlsFiles(certs / f"{cert}.pem", certs / f"{cert}.key", client_ca=certs / "ca.pem"),
                port=ports.get(key, 0),
                name=f"operator-{key}",
            )
            servers.append(server)
            operators[key] = sim
            urls[key] = f"{server.url}/service/v3"
            far.set_service_address(key, urls[key])
        far_server = serve_in_thread(
            far.app,
            TlsFiles(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem"),
            port=far_port,
            name="far",
        )
        servers.append(far_server)
    except BaseException:
        for s in reversed(servers):
            s.stop()
        raise
    world = SandboxWorld(far, f"{far_server.url}/Recipient/v3", operators, urls, servers)
    log.info("sandbox simulators: FaR %s, operators %s", world.far_url, urls)
    return world
