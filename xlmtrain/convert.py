"""`python -m xlmtrain.convert`: see `xlmtrain.cli.convert`."""

from xlmtrain.cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
