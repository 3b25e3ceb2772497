"""Data sources: target images (emoji, files) and MNIST."""
