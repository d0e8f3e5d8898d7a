"""`python -m xlmtrain.runs`: see `xlmtrain.cli.runs`."""

from xlmtrain.cli.runs import main

if __name__ == "__main__":
    raise SystemExit(main())
