"""Clean a WikiText .tokens file into plain text: ``python prepare_wikitext.py --input A --output B``.

See ``tinyllm/wikitext.py`` for the cleaning rules.
"""

from tinyllm.wikitext import main

if __name__ == "__main__":
    raise SystemExit(main())
