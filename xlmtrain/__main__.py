"""`python -m xlmtrain ...` runs the pretraining CLI (`xlmtrain.cli.train`)."""

from xlmtrain.cli.train import main

if __name__ == "__main__":
    main()
