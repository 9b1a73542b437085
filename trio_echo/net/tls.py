"""TLS (``--tls-cert``/``--tls-key``): the server's ``SSLContext``, and one-line descriptions of
what went wrong with a client's TLS.

The context is loaded at start-up, so that a missing file, a file that is not PEM, an encrypted
key or a key that does not match the certificate is one line and exit status 2 before anything
listens -- not a surprise at the first client.  The handshake itself happens in each client's
handler task (``trio_echo.server.serve``), under ``--tls-handshake-timeout``.
"""

from __future__ import annotations

import ssl

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLSSetupError",
    "describe_ssl_error",
    "server_context",
]

# How long a client may take to complete its handshake, counted from the accept: a client that
# connects and sends nothing (or a byte a second) holds a slot and a socket no longer than this.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# Closing a TLS connection sends a close_notify (so that the client can tell our end of the
# stream from a truncation); this bounds the wait for room to send it to a client that does
# not read, including in a handler that is being cancelled.
CLOSE_TIMEOUT = 0.1

# OpenSSL's reasons for a failed handshake that deserve a word of explanation in the log.
_HINTS = {
    "WRONG_VERSION_NUMBER": "not TLS: a plain-text client?",
    "HTTP_REQUEST": "plain HTTP on the TLS port",
    "HTTPS_PROXY_REQUEST": "an HTTP proxy request on the TLS port",
    "UNSUPPORTED_PROTOCOL": "the client offers no TLS version from 1.2 on",
    "NO_SHARED_CIPHER": "no cipher in common with the client",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust our certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client does not accept our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client does not accept our certificate",
}


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message is one line naming the flag."""


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: the key needs a passphrase we do not have."""


def _no_passphrase() -> str:
    # Without a callback, OpenSSL would prompt for the passphrase on the terminal.
    raise _EncryptedKey


def server_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """The server-side context for ``cert`` (PEM: the certificate, then any intermediates)
    and ``key`` (PEM, without a passphrase; default: in the ``cert`` file).

    Python's defaults for a server (``create_default_context(Purpose.CLIENT_AUTH)``: modern
    ciphers, no compression) with TLS 1.2 as the oldest version and no renegotiation.
    Raises :class:`TLSSetupError`.
    """
    cert_pem = _read("--tls-cert", cert)
    # OpenSSL says only "PEM lib" for a missing certificate or key: look for them ourselves.
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise TLSSetupError(f"--tls-cert {cert}: no PEM certificate in it")
    if key is None:
        if b"PRIVATE KEY-----" not in cert_pem:
            raise TLSSetupError(
                f"--tls-cert {cert}: no private key in it (give the key file with --tls-key)"
            )
    elif b"PRIVATE KEY-----" not in _read("--tls-key", key):
        raise TLSSetupError(f"--tls-key {key}: no PEM private key in it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    key_flag = f"--tls-key {key}" if key is not None else f"--tls-cert {cert}"
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TLSSetupError(
            f"{key_flag}: the private key is encrypted; this server needs one without a passphrase"
        ) from None
    except ssl.SSLError as exc:
        raise TLSSetupError(_load_problem(cert, key, exc)) from exc
    return context


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise TLSSetupError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc


def _load_problem(cert: str, key: str | None, exc: ssl.SSLError) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"--tls-key {key or cert} does not match the certificate in --tls-cert {cert}"
    if key is None:
        return f"--tls-cert {cert}: cannot use it ({_reason_text(exc)})"
    return f"--tls-cert {cert} / --tls-key {key}: cannot use them ({_reason_text(exc)})"


def _reason_text(exc: ssl.SSLError) -> str:
    """``wrong version number`` for ``[SSL: WRONG_VERSION_NUMBER] wrong version number
    (_ssl.c:1000)``: OpenSSL's words, without the source location."""
    if exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    text = str(exc.strerror or exc)
    return text.split(" (_ssl.c:", 1)[0].removeprefix("[SSL] ")


def describe_ssl_error(exc: ssl.SSLError, *, handshake: bool) -> str:
    """Why a client's TLS failed, in a few words for its log line."""
    if isinstance(exc, ssl.SSLEOFError):
        # The client closed the TCP connection without ending TLS properly.
        return "closed by the client" if handshake else "closed without a TLS close_notify"
    reason = str(exc.reason or "")
    text = _reason_text(exc)
    hint = _HINTS.get(reason)
    return f"{text}: {hint}" if hint else text
