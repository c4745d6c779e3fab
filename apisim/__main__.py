"""Run the simulator: python -m apisim [--host H] [--port P] (defaults from APISIM_HOST / APISIM_PORT)."""

from __future__ import annotations

import argparse
import os
import sys

from .server import make_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apisim", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("APISIM_HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("APISIM_PORT") or 8001))
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)
    host, port = server.server_address[:2]
    config = server.state.config
    sys.stderr.write(f"apisim listening on http://{host}:{port} (public URL {config.public_url}, "
                     f"max_concurrent={config.max_concurrent}, latency={config.latency}s, "
                     f"api key {'required' if config.api_key else 'not checked'})\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
