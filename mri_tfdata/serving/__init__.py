"""A trained classifier as a file: model.keras with its metadata, and the SavedModel export."""
