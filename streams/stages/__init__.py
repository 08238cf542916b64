"""The worker's stages: route, fold, lookups, reraise, correct, reconcile, dead letters, web views; dependencies injected."""
