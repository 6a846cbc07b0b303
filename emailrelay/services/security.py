"""Authentication and TLS settings of one configuration, loaded once.

What it is for: turning the ``--server-auth``, ``--client-auth``,
``--*-auth-config`` and TLS options into loaded secrets, parsed auth
configs and ``ssl.SSLContext`` objects, at start-up (and again on SIGHUP)
— so a bad secrets file or certificate is a start-up error naming the
file and line, never a failure in the middle of a session.  The files are
read as root (:func:`~emailrelay.identity.as_root`), as upstream reads them:
a role runs as ``--user``, and a key or secrets file is often root's 0600.  ``pam:``
(``--server-auth``, ``--pop-auth``) gives ``PamSecrets`` (libpam loaded
now); ``--client-auth=pam:`` is a ``ConfigError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .. import log as logmod
from ..config import Config
from ..errors import ConfigError, UsageError
from ..identity import as_root

if TYPE_CHECKING:  # the rest is imported when an option needs it (the front end checks every start)
    import ssl

    from ..auth.secrets import Secrets
    from ..protocol.sasl import AuthConfig, BruteForceGuard


@dataclass
class ServerSecurity:
    secrets: Secrets | None
    auth_config: AuthConfig | None
    tls_context: ssl.SSLContext | None
    tls_implicit: bool
    tls_required: bool
    guard: BruteForceGuard

    def mechanisms(self, encrypted: bool) -> tuple[str, ...]:
        if self.secrets is None or not self.secrets.has_server_accounts:
            return ()
        offered = self.secrets.mechanisms_for_server()
        if self.auth_config is not None:
            offered = self.auth_config.select(offered, encrypted)
        return tuple(offered)


@dataclass
class ClientSecurity:
    secrets: Secrets | None
    auth_config: AuthConfig | None
    tls_context: ssl.SSLContext | None
    tls_implicit: bool
    tls_required: bool


def server_security(config: Config, secrets_path: str | None = None) -> ServerSecurity:
    from ..protocol.sasl import BruteForceGuard

    secrets, auth_config, context = _server_parts(config, secrets_path)
    return ServerSecurity(
        secrets=secrets,
        auth_config=auth_config,
        tls_context=context,
        tls_implicit=config.server_tls_connection,
        tls_required=config.server_tls_required,
        guard=BruteForceGuard(),
    )


def check(config: Config) -> None:
    """Load the server's and the client's secrets, auth configs and certificates, for their errors
    only (start-up: naming file and line); nothing is imported for options not given.  With TLS in
    use, ``--tls-config`` items that are ignored (any but a protocol keyword) get E-MailRelay 2.6b's
    warning."""
    _server_parts(config, None)
    client_security(config)
    tls_on = (
        config.server_tls or config.server_tls_connection or config.client_tls or config.client_tls_connection
    )
    if tls_on and config.tls_config:
        from ..auth import tls

        ignored = tls.parse_tls_config(config.tls_config).ignored
        if ignored:
            logmod.get().warning(f"tls-config: tls configuration items ignored: [{','.join(ignored)}]")


def _server_parts(
    config: Config, secrets_path: str | None
) -> tuple[Secrets | None, AuthConfig | None, ssl.SSLContext | None]:
    path = secrets_path if secrets_path is not None else config.server_auth
    secrets = _secrets(path, pam_allowed=True) if path else None
    context = None
    if config.server_tls or config.server_tls_connection:
        from ..auth import tls

        with as_root():  # (a role runs as --user; upstream reads keys and secrets as root)
            context = tls.server_context(
                config.server_tls_certificates, config.server_tls_verify, config.tls_config
            )
    elif config.server_tls_required:
        raise UsageError("--server-tls-required needs --server-tls")
    auth_config = _auth_config(config.server_auth_config, "server")
    return secrets, auth_config, context


def _secrets(option: str, *, pam_allowed: bool) -> Secrets:
    from ..auth.secrets import Secrets, SecretsLineError, is_pam

    if not is_pam(option):
        try:
            with as_root():
                return Secrets.from_option(option)
        except SecretsLineError as exc:  # E-MailRelay 2.6b's three lines: the first two are log lines
            logmod.get().warning(exc.problem)
            logmod.get().error(str(exc))
            raise ConfigError("invalid secrets file") from None
    if not pam_allowed:  # PAM cannot supply passwords for the SMTP client: E-MailRelay 2.6b's words
        raise ConfigError(f"cannot read secrets file: {option}")
    from ..auth.pam import PamSecrets

    return PamSecrets()


def _auth_config(value: str | None, side: Literal["server", "client"]) -> AuthConfig | None:
    if not value:
        return None
    from ..protocol.sasl import AuthConfig

    return AuthConfig.parse(value, side)


def client_security(config: Config) -> ClientSecurity:
    secrets = _secrets(config.client_auth, pam_allowed=False) if config.client_auth else None
    context = None
    tls_on = config.client_tls or config.client_tls_connection
    if config.client_tls_verify_name and not config.client_tls_verify:  # E-MailRelay 2.6b's words
        raise UsageError("the --client-tls-verify-name options requires --client-tls-verify")
    if not tls_on and (
        config.client_tls_required or config.client_tls_verify or config.client_tls_certificates
    ):
        raise UsageError("the --client-tls- options require --client-tls or --client-tls-connection")
    if tls_on:
        from ..auth import tls

        with as_root():
            context = tls.client_context(
                config.client_tls_certificates,
                config.client_tls_verify,
                config.client_tls_verify_name,
                config.client_tls_server_name,
                config.tls_config,
            )
    auth_config = _auth_config(config.client_auth_config, "client")
    return ClientSecurity(
        secrets=secrets,
        auth_config=auth_config,
        tls_context=context,
        tls_implicit=config.client_tls_connection,
        tls_required=config.client_tls_required,
    )
