"""`python -m xlmtrain.preprocess`: the preprocess CLI (xlmtrain/cli/preprocess.py)."""

from xlmtrain.cli.preprocess import main

if __name__ == "__main__":
    main()
