"""`python -m xlmtrain.report`: see `xlmtrain.cli.report`."""

from xlmtrain.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
