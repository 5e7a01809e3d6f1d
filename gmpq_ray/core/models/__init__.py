"""Models: the registry of searchable CNNs, timm models, and locally read pretrained weights."""
