"""`python -m xlmtrain.embed`: see `xlmtrain.cli.embed`."""

from xlmtrain.cli.embed import main

if __name__ == "__main__":
    raise SystemExit(main())
