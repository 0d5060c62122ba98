"""The browser GUI (`python gui.py`): a Gradio app that trains through files and a subprocess.

Importing this package does not import gradio; `main` checks for it and names the extra when it is missing.
"""

from __future__ import annotations

import argparse
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
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Set before gradio is imported: it reads this at import and at Blocks creation (version check, telemetry).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    require_gradio()
    from tinyllm.gui.app import build_app, launch

    demo = build_app(out_root=args.out_root)
    try:
        launch(demo, host=args.host, port=args.port, share=args.share)
    except OSError as e:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port} ({e}); pass another --port", file=sys.stderr)
        sys.exit(2)
