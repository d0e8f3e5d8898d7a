"""The jobs behind `python -m xlmtrain`: pretraining and fine-tuning, each typed settings -> setup -> fit -> report."""
