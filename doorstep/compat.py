"""What a bundle raises when this code cannot compute the features it was trained on."""

from __future__ import annotations


class FeatureSetMismatch(ValueError):
    """A model bundle's feature set (or its boosters' feature names) is not the one this code
    computes: it cannot be served or scored here. The registry's gate replaces a champion
    that raises it, since serving would refuse that champion too."""
