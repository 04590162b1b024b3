"""Recipes: YAML files that drive a whole compression run (model, data, baseline, steps, output)."""
