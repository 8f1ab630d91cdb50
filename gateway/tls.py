"""TLS for the MQTT link: the files it uses, and its failures in words a technician can act on.

Design note
-----------
Operations: `Tls` names the CA, certificate and key files of an mqtts:// connection;
`explain_tls_error` turns a failed handshake (ours: the broker's certificate; or the
broker's verdict on ours, which under TLS 1.3 comes only on the first read) into a
sentence; `explain_tls_files` says which file could not be loaded; `explain_early_close`
explains a connection closed before the CONNACK. gateway/mqtt.py calls them and puts the
sentence in `last_error` and the log, where `hallgate status` shows it.
Goals: name the cause (unknown CA, expired, hostname mismatch, refused certificate, a plain
port) and the file or setting to fix; never guess beyond what the error and the files show.
"""

import logging
import os
import ssl
import time
from dataclasses import dataclass

log = logging.getLogger("hallgate.gateway.mqtt")


@dataclass(frozen=True)
class Tls:
    """Files for mqtts:// URLs: `ca` to verify the broker (None: the system's CAs),
    `cert` and `key` for a client certificate."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def check(self):
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"tls {name}: no such file {path!r}")
        if self.key is not None and self.cert is None:
            raise ValueError("tls key given without cert")



# OpenSSL's verify codes of a broker certificate we do not accept (X509_V_ERR_*).
_UNKNOWN_CA_CODES = {2, 18, 19, 20, 21, 27}
_EXPIRED, _NOT_YET_VALID, _REVOKED, _HOSTNAME = 10, 9, 23, 62
# The broker's TLS alert about our certificate, as OpenSSL names it in the error's text.
_ALERTS = (
    ("CERTIFICATE_REQUIRED", "it requires a client certificate"),
    ("UNKNOWN_CA", "unknown CA: our certificate is not signed by a CA it trusts"),
    ("CERTIFICATE_EXPIRED", "it says our certificate has expired"),
    ("CERTIFICATE_REVOKED", "it says our certificate was revoked"),
    ("BAD_CERTIFICATE", "it calls our certificate bad"),
    ("UNSUPPORTED_CERTIFICATE", "it does not accept our kind of certificate"),
    ("CERTIFICATE_UNKNOWN", "it cannot verify our certificate"),
    ("ACCESS_DENIED", "access denied"),
)


def _where_ca(tls):
    return f"ca_file {tls.ca}" if tls.ca else "the system's CA store (no ca_file)"


def _cert_facts(tls):
    """What can be seen of our own client certificate without the broker: expired or not
    valid yet, or issued by a CA that is not in ca_file; a phrase, or None."""
    if tls.cert is None:
        return None
    try:
        from cryptography import x509

        with open(tls.cert, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        now = time.time()
        if cert.not_valid_after_utc.timestamp() < now:
            return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if cert.not_valid_before_utc.timestamp() > now:
            return (f"it is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC "
                    "(is the gateway's clock right?)")
        if tls.ca is not None:
            with open(tls.ca, "rb") as f:
                cas = x509.load_pem_x509_certificates(f.read())
            if cert.issuer not in {ca.subject for ca in cas}:
                return (f"it is issued by {cert.issuer.rfc4514_string()}, a CA that is not in "
                        f"ca_file (which holds "
                        f"{', '.join(ca.subject.rfc4514_string() for ca in cas)})")
    except (OSError, ValueError) as e:
        log.debug("mqtt: cannot inspect the client certificate %s: %s", tls.cert, e)
    return None


def explain_tls_error(error, tls, host):
    """A TLS failure on connecting, in words a technician can act on. `error` is the
    exception (ssl.SSLError, OSError) or the text paho logged for a read that failed after
    the handshake (the broker's verdict on our certificate comes then under TLS 1.3);
    `tls` the Tls in use, `host` the URL's host."""
    tls = tls or Tls()
    raw = str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code == _HOSTNAME:
            return (f"TLS: certificate verify failed: hostname mismatch: the broker's "
                    f"certificate is not valid for {host!r} (use a broker URL with a name "
                    f"the certificate has, or reissue it with this one)")
        if code == _EXPIRED:
            return ("TLS: certificate verify failed: the broker's certificate has expired "
                    "(renew it on the broker, or check the gateway's clock)")
        if code == _NOT_YET_VALID:
            return ("TLS: certificate verify failed: the broker's certificate is not valid "
                    "yet (is the gateway's clock right?)")
        if code == _REVOKED:
            return "TLS: certificate verify failed: the broker's certificate was revoked"
        if code in _UNKNOWN_CA_CODES:
            return (f"TLS: certificate verify failed: unknown CA: the broker's certificate "
                    f"is not signed by a CA in {_where_ca(tls)} ({error.verify_message})")
        return f"TLS: certificate verify failed: {error.verify_message}"
    if "WRONG_VERSION_NUMBER" in raw or "wrong version number" in raw:
        return ("TLS: the broker's port does not speak TLS (wrong version number): use "
                "mqtt:// for a plain port, or the broker's TLS port")
    for token, meaning in _ALERTS:
        if token in raw:
            why = meaning
            if tls.cert is None and token in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE"):
                why = ("it requires a client certificate, and no client certificate is "
                       "configured (cert_file and key_file in [mqtt])")
            facts = _cert_facts(tls)
            return (f"TLS: the broker refused our certificate: {why}"
                    + (f"; cert_file {tls.cert}: {facts}" if facts else "")
                    + f" ({raw})")
    return f"TLS: {raw}"


def explain_tls_files(error, tls):
    """Which of the TLS files could not be loaded (paho's tls_set raised `error`), and why."""
    tls = tls or Tls()
    if "KEY_VALUES_MISMATCH" in str(error):
        return f"TLS: key_file {tls.key} is not the private key of cert_file {tls.cert}"
    try:
        ssl.create_default_context(cafile=tls.ca)
    except ssl.SSLError as e:
        return f"TLS: ca_file {tls.ca}: cannot load it as PEM CA certificates ({e})"
    if tls.cert is not None:
        try:
            ssl.create_default_context().load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as e:
            return (f"TLS: cert_file {tls.cert} / key_file {tls.key}: cannot load them as a "
                    f"PEM certificate and its unencrypted private key ({e})")
    return f"TLS: cannot load the CA, certificate or key files: {error}"


def explain_early_close(tls, url_tls):
    """Why a connection may close before the CONNACK with nothing said: under TLS the broker
    drops a client whose certificate it does not accept (TLS 1.3: after our handshake)."""
    if not url_tls:
        return ("the broker closed the connection before answering CONNECT (if that port "
                "is TLS only, the URL must be mqtts://)")
    tls = tls or Tls()
    if tls.cert is None:
        return ("TLS: the broker refused our certificate: it closed the connection before "
                "answering CONNECT, and no client certificate is configured (cert_file and "
                "key_file in [mqtt]); the broker probably requires one")
    facts = _cert_facts(tls)
    if facts:
        return f"TLS: the broker refused our certificate: cert_file {tls.cert}: {facts}"
    return ("TLS: the broker closed the connection before answering CONNECT: it probably "
            f"refused our certificate (cert_file {tls.cert}: not from a CA the broker trusts, "
            "or revoked; the broker's log says which)")
