"""`python -m xlmtrain.retrieval`: see `xlmtrain.cli.retrieval`."""

from xlmtrain.cli.retrieval import main

if __name__ == "__main__":
    raise SystemExit(main())
