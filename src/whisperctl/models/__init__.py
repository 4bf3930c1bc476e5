"""The model side: the registry of names, dims, checkpoint reading, the transformer and the loader."""
