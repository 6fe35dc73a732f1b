"""Names shared by every layer: the datalist's splits and the mark of an unlabelled image."""

__all__ = ["SPLITS", "UNLABELLED", "UNLABELLED_SPLIT"]

# the labelled splits of a datalist, in the order they are checked and reported
SPLITS = ("training", "validation", "test")
# the datalist list of images without labels, trained on by the distillation terms only
UNLABELLED_SPLIT = "unlabelled"
# the label an unlabelled image carries in a training batch (multi-label: every value); the supervised terms skip it
UNLABELLED = -1
