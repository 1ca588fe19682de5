"""Run the reference partner by hand: `python -m examples.partner --port 8765 --cert-out
partner.pem`; it prints its endpoint and serves until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
from pathlib import Path

from examples.partner.server import DEFAULT_DOMAIN, Faults, ReferencePartner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.partner", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN)
    parser.add_argument("--key-type", choices=["rsa", "ec"], default="rsa")
    parser.add_argument("--cert-out", type=Path, help="write the certificate (PEM) here")
    parser.add_argument("--token-env", help="require the bearer token held by this variable")
    parser.add_argument("--complete-after", type=float, help="complete requests after N s")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="every API reply waits this long (s): a partner farther away")
    args = parser.parse_args(argv)

    token = os.environ[args.token_env] if args.token_env else None
    partner = ReferencePartner(
        domain=args.domain, key_type=args.key_type, token=token, port=args.port,
        complete_after=args.complete_after, faults=Faults(delay=args.delay),
    )
    with partner:
        if args.cert_out:
            args.cert_out.write_bytes(partner.certificate_pem)
        # Flushed: a parent process reads the endpoint from a pipe.
        print(f"OpenDSR reference partner at {partner.url} (domain {partner.domain})",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
