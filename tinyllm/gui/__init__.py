"""The browser GUI (`python gui.py`): a Gradio app that trains through files and a subprocess.

Importing this package does not import gradio; `main` checks for it and names the extra when it is missing.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

GRADIO_SPEC = "gradio>=6,<7"
INSTALL_HINT = 'pip install -e ".[gui]"'


def require_gradio() -> None:
    """Exit with status 2 and one clear line when gradio 6 is not installed."""
    try:
        import gradio
    except ImportError:
        print(f"error: the GUI needs gradio ({GRADIO_SPEC}), which is not installed; run: {INSTALL_HINT}",
              file=sys.stderr)
        sys.exit(2)
    major = gradio.__version__.split(".")[0]
    if major != "6":
        print(f"error: the GUI needs {GRADIO_SPEC} but gradio {gradio.__version__} is installed; run: "
              f"{INSTALL_HINT}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gui.py", description="Browser GUI for tinyllm: data, settings, training "
                                "with a live monitor, run comparison and generation.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the GUI to your network (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="also open a public link through Gradio's share "
                   "servers (off by default; it exposes the GUI to the internet)")
    p.add_argument("--out_root", default="out", help="folder whose sub-folders are listed as runs (default: out)")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                   help="require this user name and password (Gradio's login page) for every page and API call; "
                        "use it whenever --host or --share reaches beyond this machine. The password is visible to "
                        "other users of this machine in its process list: also accepted from the TINYLLM_GUI_AUTH "
                        "environment variable")
    return p


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """USER:PASSWORD -> (user, password); the password may itself contain colons."""
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth needs USER:PASSWORD, both non-empty (for example --auth ada:correct-horse)")
    return user, password


def is_loopback(host: str) -> bool:
    """True when only this machine can connect: localhost or a loopback address (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or an interface's address: other machines may reach it


def exposure_warning(host: str, share: bool, auth: tuple[str, str] | None) -> str | None:
    """The warning to print when the GUI is reachable from other machines without a password."""
    if auth is not None:
        return None
    where = []
    if not is_loopback(host):
        where.append(f"on {host}, reachable from other machines")
    if share:
        where.append("through a public Gradio share link")
    if not where:
        return None
    return (f"warning: the GUI is served {' and '.join(where)} without --auth: anyone who reaches it can read "
            "your files' names, start and stop training processes and export models on this machine; pass "
            "--auth USER:PASSWORD")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        auth = parse_auth(args.auth if args.auth is not None else os.environ.get("TINYLLM_GUI_AUTH"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # Set before gradio is imported: it reads this at import and at Blocks creation (version check, telemetry).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    require_gradio()
    from tinyllm.gui.app import build_app, launch

    demo = build_app(out_root=args.out_root)
    warning = exposure_warning(args.host, args.share, auth)
    if warning:
        print(warning, file=sys.stderr)
    try:
        launch(demo, host=args.host, port=args.port, share=args.share, auth=auth)
    except OSError as e:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); pass another --port", file=sys.stderr)
        sys.exit(2)
