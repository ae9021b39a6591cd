"""The `kanalvaxel` command. Errors print one line and exit non-zero."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from kanalvaxel.bootstrap import Container, build
from kanalvaxel.config import Settings, load_settings
from kanalvaxel.domain.errors import ConfigurationError, KanalvaxelError, ValidationError
from kanalvaxel.domain.masking import escape_controls, mask_identity_numbers, redact_passwords
from kanalvaxel.services.print_batches import PrintBatchCloser

log = logging.getLogger("kanalvaxel")
app = typer.Typer(add_completion=False, no_args_is_help=True, help="kanalväxel: the channel switch.")
clients_app = typer.Typer(no_args_is_help=True, help="API clients (case systems) and their keys.")
app.add_typer(clients_app, name="clients")
in_doubt_app = typer.Typer(
    no_args_is_help=True,
    help="E-mail letters in doubt: sent whole, but the SMTP relay gave no final answer.",
)
app.add_typer(in_doubt_app, name="in-doubt")
print_batches_app = typer.Typer(
    no_args_is_help=True, help="Print batches: the letters collected for the print vendor."
)
app.add_typer(print_batches_app, name="print-batches")

SANDBOX_CLIENT = "sandbox"


class _MaskingFilter(logging.Filter):
    """Every line we log: no password from a URL, no identity number at INFO and above, and no raw control
    character (what came from outside cannot forge a line or drive the terminal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.INFO:
            message = mask_identity_numbers(message)
        record.msg = escape_controls(redact_passwords(message))
        record.args = None
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every migration at INFO; on the command line only its problems are news.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def _settings() -> Settings:
    settings = load_settings()
    setup_logging(settings.log_level)
    return settings


def _warn_defaults(settings: Settings) -> None:
    if settings.is_sandbox:
        banner = "!" * 78
        log.warning(banner)
        log.warning(
            "SANDBOX: %s — %s at %s, development certificates from %s, simulators only. "
            "Never use this for real letters.",
            "running on EMBEDDED DEFAULTS (no configuration found)"
            if settings.embedded_defaults
            else "sandbox",
            settings.database_kind,
            redact_passwords(settings.database.url),
            settings.dev_certs_dir,
        )
        log.warning(banner)


def _prepare(settings: Settings, *, outside_world: bool = False) -> Container:
    """Build the container; `outside_world` for commands that send (it starts the sandbox simulators)."""
    if settings.is_sandbox:
        from kanalvaxel.devcerts import ensure_dev_certs

        ensure_dev_certs(settings.dev_certs_dir)
    container = build(settings, outside_world=outside_world)
    migrate_on_start = settings.database.migrate_on_start
    if migrate_on_start or (migrate_on_start is None and settings.is_sandbox):
        container.migrate()
    return container


def _sandbox_key(container: Container) -> str:
    """The sandbox's development API key, kept in var/ (never in the repo)."""
    path = container.settings.var_dir / "dev-api-key"
    if path.is_file():
        key = path.read_text().strip()
        if container.clients.authenticate(key) is not None:
            return key
    with contextlib.suppress(KanalvaxelError):
        container.clients.revoke(SANDBOX_CLIENT)
    names = {c.name for c in container.clients.list()}
    name = SANDBOX_CLIENT if SANDBOX_CLIENT not in names else f"{SANDBOX_CLIENT}-{uuid.uuid4().hex[:6]}"
    new = container.clients.add(name, list(container.senders))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.api_key + "\n")
    path.chmod(0o600)
    return new.api_key


def _example(url: str, key: str) -> str:
    body = {
        "recipient": {
            "id": "19121212-1212",
            "name": "Tolvan Tolvansson",
            "postal_address": {"lines": ["Storgatan 1"], "postal_code": "123 45", "city": "Småstad"},
        },
        "subject": "Beslut om bygglov",
        "body": {"content_type": "text/plain", "content": "Hej! Här kommer beslutet."},
        "confidentiality": "public",
        "message_type": "beslut",
        "case_reference": "BN 2026/42",
        "support_info": {"text": "Frågor? Ring kommunens kontaktcenter.", "phone": "010-000 00 00"},
    }
    return (
        f"curl -sS -X POST {url}/v1/shipments \\\n"
        f"  -H 'Authorization: Bearer {key}' \\\n"
        f"  -H 'Idempotency-Key: example-1' -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body, ensure_ascii=False)}'\n"
        f"curl -sS -H 'Authorization: Bearer {key}' {url}/v1/shipments/<id>"
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
    embedded_worker: Annotated[bool, typer.Option(help="Run a worker in the same process.")] = True,
    processes: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes beside the API (default: worker.processes)."),
    ] = None,
) -> None:
    """Run the REST API (and, by default, a worker: in this process, or as child processes)."""
    import uvicorn

    from kanalvaxel.entrypoints.api.app import create_app
    from kanalvaxel.entrypoints.processes import WorkerProcesses, child_environment
    from kanalvaxel.entrypoints.worker import Worker

    settings = _settings()
    _warn_defaults(settings)
    container = _prepare(settings, outside_world=True)
    count = processes or settings.worker.processes
    worker: Worker | WorkerProcesses | None = None
    if embedded_worker and count > 1:
        worker = WorkerProcesses(count, child_environment(container), _process_grace(settings))
    elif embedded_worker:
        worker = Worker(container)
    app_ = create_app(
        container,
        on_startup=worker.start if worker else None,
        on_shutdown=worker.stop if worker else None,
    )
    h = host or settings.api.host
    p = port if port is not None else settings.api.port
    url = settings.api.public_url or f"http://{h}:{p}"
    dm, msg = container.digital_mail, container.messaging
    worlds: dict[str, object] = {}
    if dm is not None and dm.world is not None:
        worlds.update(dm.world.describe())
    if msg is not None and msg.world is not None:
        worlds.update(msg.world.describe())
    if settings.is_sandbox:
        worlds = {"api": {"url": url}, **worlds}
    if worlds:
        # Where the API and the simulators listen (ephemeral ports): for `kanalvaxel send`, for people,
        # and for tests driving a sandbox.
        described = json.dumps(worlds, indent=2, ensure_ascii=False)
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        (settings.var_dir / "sandbox.json").write_text(described + "\n", encoding="utf-8")
        print(f"sandbox (also in {settings.var_dir / 'sandbox.json'}):\n{described}", flush=True)
    if settings.is_sandbox:
        key = _sandbox_key(container)
        print(f"\nkanalväxel sandbox is starting at {url}  (OpenAPI: {url}/docs)\n", flush=True)
        print("Try it:\n" + _example(url, key) + "\n", flush=True)
    uvicorn.run(app_, host=h, port=p, access_log=False, log_config=None)
    container.close()


def _process_grace(settings: Settings) -> float:
    """How long a parent waits for its worker processes to stop before killing them."""
    return settings.worker.shutdown_grace_seconds + 5.0


@app.command()
def worker(
    processes: Annotated[
        int | None, typer.Option(min=1, help="Worker processes to run (default: worker.processes).")
    ] = None,
) -> None:
    """Run a worker only (to scale out beside `serve --no-embedded-worker`)."""
    from kanalvaxel.entrypoints.processes import WorkerProcesses, child_environment, follow_parent
    from kanalvaxel.entrypoints.worker import Worker

    done = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        done.set()

    # First thing: a SIGTERM during start-up must also end in a clean stop.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    follow_parent()  # a child of `--processes N` stops when its parent dies
    settings = _settings()
    _warn_defaults(settings)
    container = _prepare(settings, outside_world=True)
    count = processes or settings.worker.processes
    w: Worker | WorkerProcesses
    if count > 1:
        # The children share what this process started (simulators, migrations); it does no work itself.
        w = WorkerProcesses(count, child_environment(container), _process_grace(settings))
    else:
        w = Worker(container)
    if done.is_set():
        container.close()
        return
    w.start()
    print(
        f"worker {w.name} running" if isinstance(w, Worker) else f"{count} worker processes running",
        flush=True,
    )
    done.wait()
    w.stop()
    container.close()


@app.command()
def migrate() -> None:
    """Apply database migrations (production runs this before starting)."""
    settings = _settings()
    container = build(settings, outside_world=False)
    container.migrate()
    print("database is at the latest schema")


@clients_app.command("add")
def clients_add(
    name: str,
    sender: Annotated[list[str], typer.Option("--sender", help="A sender identity key; repeat for more.")],
) -> None:
    """Create a client; its API key is printed once and never again."""
    container = _prepare(_settings())
    new = container.clients.add(name, sender)
    print(f"client {new.client.name} may send as {', '.join(new.client.senders)}")
    print(f"API key (shown once, store it now): {new.api_key}")


@clients_app.command("list")
def clients_list() -> None:
    """List clients (never their keys)."""
    container = _prepare(_settings())
    for c in container.clients.list():
        state = f"revoked {c.revoked_at:%Y-%m-%d}" if c.revoked_at else "active"
        print(f"{c.name}\t{state}\tsenders={','.join(c.senders)}\tkey=kvx_{c.key_id}_…")


@clients_app.command("revoke")
def clients_revoke(name: str) -> None:
    """Revoke a client's key at once."""
    container = _prepare(_settings())
    container.clients.revoke(name)
    print(f"client {name} revoked")


def _sandbox_url(settings: Settings) -> str:
    """The URL of the running sandbox, from the var/sandbox.json its `serve` writes; else the settings'."""
    described = settings.var_dir / "sandbox.json"
    if described.is_file():
        try:
            url = json.loads(described.read_text(encoding="utf-8")).get("api", {}).get("url")
        except (ValueError, AttributeError):
            url = None
        if isinstance(url, str) and url:
            return url
    return settings.api.public_url or f"http://{settings.api.host}:{settings.api.port}"


def _describe_outcome(shipment: dict[str, Any]) -> list[str]:
    """What happened to a letter, for people: the channel, every option with its reason, the end."""
    lines = [f"state: {shipment['state']}  channel: {shipment.get('channel') or '-'}"]
    decision = shipment.get("decision")
    if decision:
        lines.append(f"decision: {decision['summary']}")
        for option in decision["options"]:
            mark = "+" if option["eligible"] else "-"
            codes = ",".join(option["codes"])
            lines.append(
                f"  {mark} {option['channel']}: {option['reason']}" + (f" [{codes}]" if codes else "")
            )
        for notice in decision.get("notices", []):
            mark = "+" if notice["eligible"] else "-"
            codes = ",".join(notice["codes"])
            lines.append(
                f"  {mark} {notice['notice']}-avisering: {notice['reason']}"
                + (f" [{codes}]" if codes else "")
            )
    last = shipment["events"][-1] if shipment.get("events") else None
    if last:
        lines.append(f"last event: {last['type']} {last['at']}: {last['message']}")
    return lines


@app.command()
def send(
    to: Annotated[str, typer.Option(help="Personnummer, samordningsnummer or organisationsnummer.")],
    subject: Annotated[str, typer.Option()],
    body_file: Annotated[Path | None, typer.Option(help="A text (or .html) file with the body.")] = None,
    attach: Annotated[list[Path] | None, typer.Option(help="A PDF to attach; repeat for more.")] = None,
    name: Annotated[str | None, typer.Option(help="Recipient name (needed for print).")] = None,
    address: Annotated[list[str] | None, typer.Option(help="A street line; repeat for more.")] = None,
    postal_code: Annotated[str | None, typer.Option()] = None,
    city: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option(help="The recipient's e-mail address.")] = None,
    mobile: Annotated[str | None, typer.Option(help="The recipient's mobile number (SMS notices).")] = None,
    smime_certificate: Annotated[
        Path | None, typer.Option(help="The recipient's S/MIME certificate (PEM), for encrypted e-mail.")
    ] = None,
    protected_identity: Annotated[bool, typer.Option(help="Skyddad identitet: never e-mail or SMS.")] = False,
    confidentiality: Annotated[str, typer.Option(help="public, internal or confidential.")] = "public",
    message_type: Annotated[str, typer.Option()] = "meddelande",
    case_reference: Annotated[str | None, typer.Option()] = None,
    support_text: Annotated[str, typer.Option()] = "Kontakta avsändaren om du har frågor.",
    support_phone: Annotated[str | None, typer.Option()] = None,
    support_url: Annotated[str | None, typer.Option()] = None,
    support_email: Annotated[str | None, typer.Option()] = None,
    sender: Annotated[str | None, typer.Option(help="Sender identity key.")] = None,
    url: Annotated[
        str | None, typer.Option(help="The running service (default: the sandbox in var/sandbox.json).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="KANALVAXEL_API_KEY", help="Default: var/dev-api-key.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the letter reaches a final state.")] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="With --wait: give up after this many seconds.")
    ] = 120,
) -> None:
    """Send one letter from files through a running service's API, as a case system would."""
    import time

    import httpx

    settings = load_settings()
    base = url or _sandbox_url(settings)
    key = api_key
    if key is None:
        key_file = settings.var_dir / "dev-api-key"
        if not key_file.is_file():
            raise KanalvaxelError(
                "no API key: pass --api-key or start the sandbox once (it writes var/dev-api-key)"
            )
        key = key_file.read_text().strip()

    def read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ValidationError(what, f"cannot read {path}: {exc.strerror}") from None

    content = read(body_file, "body-file").decode("utf-8", errors="strict") if body_file else ""
    payload: dict[str, Any] = {
        "recipient": {"id": to},
        "subject": subject,
        "body": {
            "content_type": "text/html"
            if body_file and body_file.suffix in (".html", ".htm")
            else "text/plain",
            "content": content,
        },
        "attachments": [
            {"filename": p.name, "content_base64": base64.b64encode(read(p, "attach")).decode()}
            for p in attach or []
        ],
        "confidentiality": confidentiality,
        "message_type": message_type,
        "support_info": {"text": support_text},
    }
    for k, v in (("name", name), ("email", email), ("mobile", mobile)):
        if v:
            payload["recipient"][k] = v
    if smime_certificate is not None:
        payload["recipient"]["smime_certificate"] = read(smime_certificate, "smime-certificate").decode(
            "ascii", "replace"
        )
    if protected_identity:
        payload["recipient"]["protected_identity"] = True
    for k, v in (("phone", support_phone), ("url", support_url), ("email", support_email)):
        if v:
            payload["support_info"][k] = v
    if address or postal_code or city:
        payload["recipient"]["postal_address"] = {
            "lines": address or [],
            "postal_code": postal_code or "",
            "city": city or "",
        }
    if case_reference:
        payload["case_reference"] = case_reference
    if sender:
        payload["sender"] = sender
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())}
    try:
        with httpx.Client(base_url=base, timeout=60, trust_env=False) as http:
            r = http.post("/v1/shipments", json=payload, headers=headers)
            if r.status_code >= 400:
                detail = (
                    r.json().get("detail", r.text)
                    if r.headers.get("content-type", "").endswith("json")
                    else r.text
                )
                raise KanalvaxelError(f"the service refused the letter ({r.status_code}): {detail}")
            accepted = r.json()
            print(f"accepted: {accepted['id']} ({accepted['state']}) at {base}", flush=True)
            shipment = http.get(accepted["status_url"], headers=headers).json()
            state, reported = shipment["state"], ""
            deadline = time.monotonic() + timeout
            while wait and state not in ("DELIVERED", "FAILED"):
                if shipment.get("channel") and reported != f"{state}/{shipment['channel']}":
                    reported = f"{state}/{shipment['channel']}"
                    print(f"state: {state} ({shipment['channel']})", flush=True)
                if time.monotonic() > deadline:
                    raise KanalvaxelError(
                        f"letter {accepted['id']} is still {state} after {timeout:g} s "
                        f"(see {accepted['status_url']})"
                    )
                time.sleep(0.5)
                shipment = http.get(accepted["status_url"], headers=headers).json()
                state = shipment["state"]
            for line in _describe_outcome(shipment):
                print(line)
    except httpx.HTTPError as exc:
        raise KanalvaxelError(f"could not reach {base}: {exc}") from None


OPENAPI_FILE = Path("openapi/openapi.json")


def openapi_text() -> str:
    """The API description as committed in openapi/openapi.json (stable key order, trailing newline)."""
    from kanalvaxel.entrypoints.api.app import create_app

    settings = load_settings(database={"url": "sqlite://"})
    container = build(settings, outside_world=False)
    try:
        doc = create_app(container).openapi()
    finally:
        container.close()
    return json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


@app.command()
def openapi(
    check: Annotated[
        bool, typer.Option(help="Fail if the committed file differs instead of writing it.")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where the spec lives.")] = OPENAPI_FILE,
) -> None:
    """Write (or check) the committed OpenAPI description of the REST API."""
    text = openapi_text()
    if check:
        current = output.read_text(encoding="utf-8") if output.is_file() else ""
        if current != text:
            raise KanalvaxelError(f"{output} is out of date: run `kanalvaxel openapi` and commit it")
        print(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")


@app.command("dev-certs")
def dev_certs(force: Annotated[bool, typer.Option(help="Make new ones even if present.")] = False) -> None:
    """Make the development certificates in certs-dev/ (never for production)."""
    from kanalvaxel.devcerts import ensure_dev_certs

    settings = load_settings()
    written = ensure_dev_certs(settings.dev_certs_dir, force=force)
    print(f"{len(written)} file(s) written to {settings.dev_certs_dir}")


@in_doubt_app.command("list")
def in_doubt_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List letters in doubt, oldest first, with the Message-ID to look for in the relay's log."""
    from dataclasses import asdict

    from kanalvaxel.services.queries import letters_in_doubt

    container = _prepare(_settings())
    letters = letters_in_doubt(container.uow)
    if as_json:
        for letter in letters:
            print(json.dumps(asdict(letter), ensure_ascii=False))
        return
    if not letters:
        print("no letters in doubt")
    for letter in letters:
        print(
            f"{letter.shipment_id}  {letter.handed_over_at or '?'}  {letter.channel}  "
            f"{letter.email or '?'}  Message-ID {letter.message_id or '?'}  "
            f"case {letter.case_reference or '-'}"
        )


@in_doubt_app.command("resolve")
def in_doubt_resolve(
    shipment_id: str,
    delivered: Annotated[
        bool | None,
        typer.Option(
            "--delivered/--not-delivered",
            help="Found in the relay's log as sent on, or not: then the letter goes to its next channel.",
        ),
    ] = None,
    note: Annotated[str, typer.Option(help="What was checked (kept in the letter's record).")] = "",
    by: Annotated[str | None, typer.Option(help="Who decides (default: the logged-in user).")] = None,
) -> None:
    """Settle a letter in doubt; recorded with who decided and why."""
    import getpass

    if delivered is None:
        raise ValidationError("resolve", "say --delivered or --not-delivered")
    operator = by
    if operator is None:
        try:
            operator = getpass.getuser()
        except (KeyError, OSError) as exc:  # a container user with no name
            raise ValidationError("by", "no user name known here; say who decides with --by") from exc
    container = _prepare(_settings())
    shp = container.dispatcher("operator").resolve_in_doubt(
        shipment_id, delivered=delivered, operator=operator, note=note
    )
    if shp.state == "SENDING":
        print(f"letter {shp.id} goes on to the next channel of its decision (a worker sends it)")
    else:
        print(f"letter {shp.id} is now {shp.state}")


def _printing(container: Container) -> PrintBatchCloser:
    if container.printing is None:
        raise ConfigurationError("printing is switched off (print.enabled = false)")
    return container.printing


@print_batches_app.command("list")
def print_batches_list(
    include_closed: Annotated[bool, typer.Option("--all", help="Closed batches too (newest first).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List print batches that are collecting letters or being closed (with --all: closed ones too)."""
    from datetime import UTC, datetime

    container = _prepare(_settings())
    batches = _printing(container).batches(include_closed=include_closed, limit=limit)
    max_age = container.settings.print.batch_max_age_seconds
    now = datetime.now(UTC)
    if as_json:
        for b in batches:
            row = {
                "id": b.id,
                "sender": b.sender_key,
                "status": b.status,
                "letters": b.letter_count,
                "bytes": b.total_bytes,
                "opened_at": b.opened_at.isoformat(),
                "closed_at": None if b.closed_at is None else b.closed_at.isoformat(),
                "path": b.path,
            }
            print(json.dumps(row, ensure_ascii=False))
        return
    if not batches:
        print("no print batches" if include_closed else "no open print batches")
    for b in batches:
        opened = b.opened_at if b.opened_at.tzinfo else b.opened_at.replace(tzinfo=UTC)
        if b.status == "OPEN":
            due = max(0, max_age - int((now - opened).total_seconds()))
            when = f"closes in {due} s (or when full)" if b.letter_count else "empty"
        elif b.status == "FULL":
            when = "full: closes at once"
        elif b.status == "CLOSING":
            when = "being closed"
        else:
            when = f"closed {b.closed_at:%Y-%m-%d %H:%M:%S}  {b.path}"
        print(
            f"{b.id}  {b.status:<7}  sender={b.sender_key}  letters={b.letter_count}  "
            f"bytes={b.total_bytes}  opened {opened:%Y-%m-%d %H:%M:%S}  {when}"
        )


@print_batches_app.command("close")
def print_batches_close(
    batch_id: Annotated[
        str | None, typer.Argument(help="The batch to close (see `print-batches list`).")
    ] = None,
    close_all: Annotated[bool, typer.Option("--all", help="Every open batch that holds letters.")] = False,
) -> None:
    """Send what is collected now: close a batch (or every open one) and hand it to the print vendor."""
    if (batch_id is None) == (not close_all):
        raise ValidationError("close", "name one batch ID or say --all")
    container = _prepare(_settings())
    printing = _printing(container)
    if batch_id is not None:
        print(f"closed {batch_id}: {printing.close_now(batch_id)}")
        return
    paths = printing.close_all_open()
    if not paths:
        print("no open print batch holds letters")
    for path in paths:
        print(f"closed: {path}")


@app.command("sandbox-inbox")
def sandbox_inbox(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List what the sandbox's mailbox operators, SMTP sink and SMS gateway received (var/sandbox/)."""
    import email
    import email.policy

    settings = load_settings()
    if not settings.is_sandbox:
        raise ConfigurationError("sandbox-inbox reads the sandbox's simulators; this is production")
    root = settings.var_dir / "sandbox"
    rows: list[dict[str, object]] = []
    for path in sorted((root / "mail").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        rows.append(
            {
                "kind": "e-post",
                "file": str(path),
                "date": str(msg.get("Date", "")),
                "to": str(msg.get("To", "")),
                "subject": str(msg.get("Subject", "")),
                "encrypted": msg.get_content_type() == "application/pkcs7-mime",
            }
        )
    for path in sorted((root / "digital").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            {
                "kind": "digital",
                "file": str(path),
                "received_at": data.get("received_at"),
                "operator": data.get("operator"),
                "to": mask_identity_numbers(str(data.get("recipient_id", ""))),
                "subject": data.get("subject"),
                "message_id": data.get("message_id"),
            }
        )
    for path in sorted((root / "sms").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        rows.append(
            {"kind": "sms", "file": str(path), **{k: data.get(k) for k in ("received_at", "to", "text")}}
        )
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    if not rows:
        print(f"nothing received yet in {root}")
    for row in rows:
        if row["kind"] == "sms":
            print(f"SMS    {row['received_at']}  {row['to']}: {row['text']}")
        elif row["kind"] == "digital":
            print(f"DIGITAL {row['received_at']}  {row['operator']}  {row['to']}: {row['subject']}")
        else:
            lock = " [krypterad]" if row["encrypted"] else ""
            print(f"E-POST {row['date']}  {row['to']}: {row['subject']}{lock}  ({row['file']})")


def main() -> None:
    try:
        app(standalone_mode=False)
    except KanalvaxelError as exc:
        print(f"kanalvaxel: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
