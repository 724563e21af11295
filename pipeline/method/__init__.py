"""The method people come to read: pseudo-label selection (numpy only), self-training rounds, the verdict."""
