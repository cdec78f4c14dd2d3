"""Models shipped inside the package (``default/``: model.safetensors + model.json)."""
