#!/usr/bin/env python3
"""Makes a test CA and the certificates of a secured hallgate deployment (hardware/mosquitto/).

For a test bench or a pilot: the CA's private key lies in the output folder beside the rest.
A production CA keeps its key offline; the names below are what it must issue all the same.

What it writes into OUT (private keys mode 0600, the folder 0700 when it is made here):
  ca.crt, ca.key                      the CA (reused when both are already there, unless --force)
  broker.crt, broker.key              the broker's server certificate: SANs from --broker-name
  hallgate-{site}-{gateway}.crt/.key  one client certificate per --gateway
  hallgate-central-{site}.crt/.key    the central service's client certificate (--central)
  hallgate-kiosk-{site}-{name}.crt/.key      a ticket kiosk's (--kiosk)
  hallgate-monitor-{site}-{name}.crt/.key    a read-only monitoring client's (--monitor)

The certificate's common name (CN) is the MQTT user name (mosquitto `use_identity_as_username`)
and, with `use_username_as_clientid`, the client id too: for a gateway it is the client id of
the MQTT contract, `hallgate-{site}-{gateway}` (protocols/MQTT.md section 2), for the central
service `hallgate-central-{site}`. The ACL (hardware/make_acl.py) gives each CN its topics.

An existing private key is never overwritten without --force: a key in use on a gateway
would stop working. Run `python3 hardware/make_test_ca.py --help` for the options.

Example::

    python3 hardware/make_test_ca.py --site msk-01 --gateway gw-1 --gateway gw-2 --central \\
        --broker-name broker.hall.example --out /tmp/hall-ca
"""

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # site and gateway ids (protocols/MQTT.md)
DEFAULT_BROKER_NAMES = ("localhost", "127.0.0.1", "::1")
CA_FILES = ("ca.crt", "ca.key")


def gateway_cn(site, gateway):
    """The CN (= MQTT user name and client id) of a gateway's certificate."""
    return f"hallgate-{site}-{gateway}"


def central_cn(site):
    return f"hallgate-central-{site}"


def kiosk_cn(site, name):
    return f"hallgate-kiosk-{site}-{name}"


def monitor_cn(site, name):
    return f"hallgate-monitor-{site}-{name}"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now():
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_key():
    """An EC P-256 key: small, quick to make, and what mosquitto and Python's ssl both take."""
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(cn="hallgate test CA", days=3650, key=None, not_before=None):
    """(key, certificate) of a self-signed CA valid from `not_before` (default: now, less an
    hour for clocks behind) for `days` days."""
    key = key or new_key()
    start = not_before or _now() - dt.timedelta(hours=1)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_cert(ca_key, ca_cert, cn, *, days=365, server_names=(), key=None, not_before=None):
    """(key, certificate) signed by the CA: a client certificate, or a server certificate
    when `server_names` (DNS names or IP addresses, put in the SAN) are given."""
    key = key or new_key()
    start = not_before or _now() - dt.timedelta(hours=1)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        sans = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def write_key(path, key):
    """Writes a private key readable by its owner only (0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem(key))


def write_cert(path, cert):
    Path(path).write_bytes(cert_pem(cert))


def write_pair(out, stem, key, cert):
    """OUT/stem.key and OUT/stem.crt; returns their paths."""
    key_path, cert_path = Path(out) / f"{stem}.key", Path(out) / f"{stem}.crt"
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return cert_path, key_path


def load_ca(out):
    """(key, certificate) of the CA in OUT."""
    out = Path(out)
    cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    return key, cert


def _site_name(value):
    if not NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use 1-64 letters, digits, '.', '_' or '-' (an MQTT topic level)")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="make_test_ca.py",
        description="Make a test CA and the certificates of a secured hallgate deployment "
        "(mosquitto with client certificates: hardware/mosquitto/README.md). The CN of a "
        "client certificate is its MQTT user name and client id: hallgate-{site}-{gateway} "
        "for a gateway, hallgate-central-{site} for the central service.",
        epilog="Existing private keys are never overwritten without --force. An existing CA "
        "(ca.crt and ca.key in OUT) signs the new certificates, so a gateway can be added "
        "later; --force makes a new CA (and every certificate named must then be made again).",
    )
    p.add_argument("--site", required=True, type=_site_name, help="site id (hall/v1/{site}/...)")
    p.add_argument("--gateway", action="append", default=[], type=_site_name, metavar="ID",
                   help="a gateway id; repeat for several")
    p.add_argument("--central", action="store_true",
                   help="also the central service's certificate (hallgate-central-{site})")
    p.add_argument("--kiosk", action="append", default=[], type=_site_name, metavar="NAME",
                   help="a ticket kiosk's certificate (publishes ticket/request)")
    p.add_argument("--monitor", action="append", default=[], type=_site_name, metavar="NAME",
                   help="a read-only monitoring client's certificate (reads hall/v1/{site}/#)")
    p.add_argument("--broker-name", action="append", default=[], metavar="NAME",
                   help="DNS name or IP address the gateways use for the broker (the broker "
                   "certificate's SANs); repeat for several; default: "
                   + ", ".join(DEFAULT_BROKER_NAMES))
    p.add_argument("--no-broker", action="store_true",
                   help="do not make a broker certificate")
    p.add_argument("--out", required=True, type=Path, help="output folder (made if missing)")
    p.add_argument("--days", type=int, default=365,
                   help="validity of the broker and client certificates, days (default 365)")
    p.add_argument("--ca-days", type=int, default=3650,
                   help="validity of a new CA, days (default 3650)")
    p.add_argument("--ca-cn", default="hallgate test CA", help="the CA's common name")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing keys and certificates, and make a new CA")
    args = p.parse_args(argv)
    if args.days < 1 or args.ca_days < 1:
        p.error("--days and --ca-days must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out
    site = args.site
    leaves = []  # (file stem, CN, server names)
    if not args.no_broker:
        leaves.append(("broker", "hallgate broker", args.broker_name or DEFAULT_BROKER_NAMES))
    leaves += [(gateway_cn(site, g), gateway_cn(site, g), ()) for g in args.gateway]
    if args.central:
        leaves.append((central_cn(site), central_cn(site), ()))
    leaves += [(kiosk_cn(site, k), kiosk_cn(site, k), ()) for k in args.kiosk]
    leaves += [(monitor_cn(site, m), monitor_cn(site, m), ()) for m in args.monitor]
    stems = [stem for stem, _, _ in leaves]
    if len(set(stems)) != len(stems):
        print("make_test_ca: the same certificate is named twice", file=sys.stderr)
        return 2

    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
    have_ca = all((out / f).exists() for f in CA_FILES)
    if not args.force:
        existing = [out / f"{stem}.key" for stem in stems if (out / f"{stem}.key").exists()]
        if not have_ca and (out / "ca.key").exists():
            existing.insert(0, out / "ca.key")
        if existing:
            print("make_test_ca: refusing to overwrite existing private keys (use --force; "
                  "--no-broker keeps the broker's when adding a client):\n  "
                  + "\n  ".join(map(str, existing)), file=sys.stderr)
            return 1

    if have_ca and not args.force:
        ca_key, ca_cert = load_ca(out)
        print(f"using the CA in {out / 'ca.crt'} ({ca_cert.subject.rfc4514_string()})")
    else:
        ca_key, ca_cert = make_ca(args.ca_cn, args.ca_days)
        write_pair(out, "ca", ca_key, ca_cert)
        print(f"wrote {out / 'ca.crt'} and ca.key (new CA, {args.ca_days} days)")
    for stem, cn, names in leaves:
        key, cert = make_cert(ca_key, ca_cert, cn, days=args.days, server_names=names)
        write_pair(out, stem, key, cert)
        extra = f", SAN {', '.join(names)}" if names else ""
        print(f"wrote {out / stem}.crt and .key (CN {cn}{extra}, {args.days} days)")
    if args.gateway:
        g = args.gateway[0]
        print("\nin a gateway's hall config (copy the three files to the gateway):\n"
              "[mqtt]\n"
              f'urls = ["mqtts://{(args.broker_name or ["localhost"])[0]}:8883"]\n'
              f'ca_file = "{out / "ca.crt"}"\n'
              f'cert_file = "{out / gateway_cn(site, g)}.crt"\n'
              f'key_file = "{out / gateway_cn(site, g)}.key"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
