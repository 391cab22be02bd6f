"""Model organisms: small models trained on a synthetic toy world, bundled with mechscope."""
