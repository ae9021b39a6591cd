"""The ``formedlare`` command: run the relay as its own HTTPS service. Errors print one line and exit 2.

    formedlare serve [--config formedlare.toml] [--host H] [--port P]

Settings are :class:`formedlare.settings.RelaySettings` plus an ``https`` section (where to listen, the
server certificate, the CA of accepted client certificates) and ``worker_threads``. They come from
``FORMEDLARE_*`` environment variables (``__`` nests: ``FORMEDLARE_HTTPS__PORT=8443``) over a TOML file:
``--config``, else ``$FORMEDLARE_CONFIG``, else ``./formedlare.toml`` when it exists. The service always
requires client certificates (mutual TLS). SIGTERM or SIGINT stops it cleanly: no new connections, requests
in flight finish, the delivery threads stop claiming and calls to operators in flight get up to 30 s to end
(one still running then is abandoned: its lease expires and the letter is delivered again).

``worker_threads`` claim letters; each operator's calls run in threads of their own (up to
``operator_concurrency``), so an operator however slow never holds the threads that serve the others.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from formedlare.errors import FormedlareError
from formedlare.settings import RelaySettings

log = logging.getLogger("formedlare")

DEFAULT_CONFIG_FILE = Path("formedlare.toml")


class ConfigurationError(FormedlareError):
    """The command's settings are missing, unreadable or invalid."""


class HttpsSettings(BaseModel):
    """Where the service listens and its TLS files. ``client_ca``: the CAs whose client certificates are
    accepted (senders, kanalväxel)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    certificate: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


class ServiceSettings(RelaySettings):
    """The relay's settings plus what the stand-alone service needs."""

    https: HttpsSettings = HttpsSettings()
    worker_threads: int = Field(default=2, ge=1, le=64)
    log_level: str = "INFO"


def load_settings(config: Path | None = None) -> ServiceSettings:
    """Read the settings (environment over the TOML file). Raises ConfigurationError with one line."""
    toml_file = _config_file(config)

    class _Sourced(ServiceSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if toml_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
            return tuple(sources)

    try:
        return _Sourced()
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(f"invalid setting {where}: {first['msg']}") from None
    except (OSError, ValueError) as exc:  # an unreadable or malformed TOML file
        raise ConfigurationError(f"cannot read {toml_file}: {exc}") from None


def _config_file(config: Path | None) -> Path | None:
    named = config or (Path(os.environ["FORMEDLARE_CONFIG"]) if os.environ.get("FORMEDLARE_CONFIG") else None)
    if named is not None:
        if not named.is_file():
            raise ConfigurationError(f"the configuration file {named} does not exist")
        return named
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


app = typer.Typer(add_completion=False, no_args_is_help=True, help="formedlare: the Mina meddelanden relay.")


@app.callback()
def _root() -> None:
    """formedlare: the Mina meddelanden relay (förmedlare)."""


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="A TOML settings file.")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run the relay service over HTTPS with mutual TLS, and its delivery threads."""
    from formedlare.app import create_app
    from formedlare.https_server import TlsFiles, serve_forever
    from formedlare.relay import Relay
    from formedlare.worker import RelayWorker

    stopping = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    # Installed first: a signal during start-up stops cleanly, and uvicorn, which re-raises the signal it
    # caught once it has shut down, then reaches this handler instead of the default one (death by signal).
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    settings = load_settings(config)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tls = settings.https
    if tls.certificate is None or tls.key is None or tls.client_ca is None:
        missing = [name for name in ("certificate", "key", "client_ca") if getattr(tls, name) is None]
        raise ConfigurationError(f"https.{', https.'.join(missing)} must be set (mutual TLS is required)")
    relay = Relay.from_settings(settings)
    worker = RelayWorker(relay, threads=settings.worker_threads)
    try:
        if stopping.is_set():
            return
        worker.start()
        listen_host = host or tls.host
        listen_port = port if port is not None else tls.port
        typer.echo(f"formedlare listening on https://{listen_host}:{listen_port}/Message/v3")
        serve_forever(
            create_app(relay),
            TlsFiles(tls.certificate, tls.key, client_ca=tls.client_ca),
            listen_host,
            listen_port,
        )
    finally:
        worker.stop()
        relay.close()
    typer.echo("formedlare stopped")


def main() -> None:
    """The console script: one-line errors and exit 2 for anything the user can fix."""
    try:
        app(standalone_mode=False)
    except (FormedlareError, OSError) as exc:
        typer.echo(f"formedlare: error: {exc}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
