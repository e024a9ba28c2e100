"""Parts of the benchmark suite (``python -m unipixel.bench``): measuring, scenarios, the random-weight 3B model."""
