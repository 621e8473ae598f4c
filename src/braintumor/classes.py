"""Names shared by every stage: the fixed class order stored with each model."""

# The order is part of every model bundle; never reorder it.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")
