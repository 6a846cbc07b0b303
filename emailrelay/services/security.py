"""Authentication and TLS settings of one configuration, loaded once.

What it is for: turning the ``--server-auth``, ``--client-auth``,
``--*-auth-config`` and TLS options into loaded secrets, parsed auth
configs and ``ssl.SSLContext`` objects, at start-up (and again on SIGHUP)
— so a bad secrets file or certificate is a start-up error naming the
file and line, never a failure in the middle of a session.  ``pam:``
(``--server-auth``, ``--pop-auth``) gives ``PamSecrets`` (libpam loaded
now); ``--client-auth=pam:`` is a ``ConfigError``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ..auth import tls
from ..auth.pam import PamSecrets
from ..auth.secrets import Secrets, is_pam
from ..config import Config
from ..errors import ConfigError, UsageError
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
    path = secrets_path if secrets_path is not None else config.server_auth
    secrets = (PamSecrets() if is_pam(path) else Secrets.from_option(path)) if path else None
    context = None
    if config.server_tls or config.server_tls_connection:
        context = tls.server_context(
            config.server_tls_certificates, config.server_tls_verify, config.tls_config
        )
    elif config.server_tls_required:
        raise UsageError("--server-tls-required needs --server-tls")
    auth_config = AuthConfig.parse(config.server_auth_config, "server") if config.server_auth_config else None
    return ServerSecurity(
        secrets=secrets,
        auth_config=auth_config,
        tls_context=context,
        tls_implicit=config.server_tls_connection,
        tls_required=config.server_tls_required,
        guard=BruteForceGuard(),
    )


def client_security(config: Config) -> ClientSecurity:
    if config.client_auth and is_pam(config.client_auth):
        raise ConfigError(
            "--client-auth=pam: is not possible: PAM cannot supply passwords for the SMTP client"
        )
    secrets = Secrets.from_option(config.client_auth) if config.client_auth else None
    context = None
    tls_on = config.client_tls or config.client_tls_connection
    if config.client_tls_verify_name and not config.client_tls_verify:  # E-MailRelay 2.6b's words
        raise UsageError("the --client-tls-verify-name options requires --client-tls-verify")
    if not tls_on and (
        config.client_tls_required or config.client_tls_verify or config.client_tls_certificates
    ):
        raise UsageError("the --client-tls- options require --client-tls or --client-tls-connection")
    if tls_on:
        context = tls.client_context(
            config.client_tls_certificates,
            config.client_tls_verify,
            config.client_tls_verify_name,
            config.client_tls_server_name,
            config.tls_config,
        )
    auth_config = AuthConfig.parse(config.client_auth_config, "client") if config.client_auth_config else None
    return ClientSecurity(
        secrets=secrets,
        auth_config=auth_config,
        tls_context=context,
        tls_implicit=config.client_tls_connection,
        tls_required=config.client_tls_required,
    )
