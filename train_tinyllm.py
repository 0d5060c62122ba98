"""Train, resume or sample a tiny GPT: `python train_tinyllm.py --help`."""

from tinyllm.cli import main

if __name__ == "__main__":
    main()
