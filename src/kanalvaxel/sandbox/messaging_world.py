"""The sandbox's e-mail and SMS world on loopback: an SMTP sink (STARTTLS with the development server
certificate) and an SMS gateway simulator (HTTPS). What they receive is kept in memory and written under
`var/sandbox/mail/` (.eml) and `var/sandbox/sms/` (.json), so people can read what would have been sent."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from formedlare.https_server import RunningServer, TlsFiles, serve_in_thread
from kanalvaxel.sandbox.sms_simulator import SmsGatewaySimulator
from kanalvaxel.sandbox.smtp_sink import SmtpSink

log = logging.getLogger(__name__)


@dataclass
class MessagingWorld:
    sink: SmtpSink | None
    sms: SmsGatewaySimulator | None
    sms_url: str | None
    mail_dir: Path
    sms_dir: Path
    servers: list[RunningServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        if self.sink is not None:
            self.sink.stop()

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.sink is not None:
            out["smtp"] = {
                "host": self.sink.host,
                "port": self.sink.port,
                "security": "starttls",
                "stored_in": str(self.mail_dir),
            }
        if self.sms_url is not None:
            out["sms_gateway"] = {"url": self.sms_url, "stored_in": str(self.sms_dir)}
        return out


def start_messaging_world(
    certs: Path,
    var_dir: Path,
    *,
    smtp: bool = True,
    sms_token: str | None = None,
    smtp_port: int = 0,
    sms_port: int = 0,
) -> MessagingWorld:
    """Start the SMTP sink (if `smtp`) and the SMS simulator (if `sms_token`). The caller must `stop()`."""
    mail_dir = var_dir / "sandbox" / "mail"
    sms_dir = var_dir / "sandbox" / "sms"
    world = MessagingWorld(None, None, None, mail_dir, sms_dir)
    try:
        if smtp:
            mail_dir.mkdir(parents=True, exist_ok=True)
            sink = SmtpSink(
                certificate=certs / "server.pem",
                key=certs / "server.key",
                require_starttls=True,
                store_dir=mail_dir,
            )
            sink.start("127.0.0.1", smtp_port)
            world.sink = sink
        if sms_token is not None:
            sms_dir.mkdir(parents=True, exist_ok=True)
            sim = SmsGatewaySimulator(sms_token, store_dir=sms_dir)
            server = serve_in_thread(
                sim.app,
                TlsFiles(certs / "server.pem", certs / "server.key"),
                port=sms_port,
                name="sms-gateway",
            )
            world.servers.append(server)
            world.sms = sim
            world.sms_url = server.url
    except BaseException:
        world.stop()
        raise
    log.info("sandbox messaging: %s", world.describe())
    return world
