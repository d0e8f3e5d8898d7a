"""`python -m xlmtrain.fill_mask`: see `xlmtrain.cli.fill_mask`."""

from xlmtrain.cli.fill_mask import main

if __name__ == "__main__":
    raise SystemExit(main())
