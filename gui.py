"""Browser GUI for tinyllm: `python gui.py [--host 127.0.0.1] [--port 7860] [--share]` (needs the gui extra)."""

from tinyllm.gui import main

if __name__ == "__main__":
    main()
