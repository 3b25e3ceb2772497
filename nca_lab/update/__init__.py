"""Update modules: how a cell changes its state from its perception."""
