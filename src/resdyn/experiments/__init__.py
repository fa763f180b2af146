"""Reproductions of the papers' claims, one module per experiment (see ``resdyn reproduce``)."""
