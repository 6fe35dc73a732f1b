"""What a named public dataset is: its classes and the folder layout a user must unpack it into."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetSpec"]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset a bundle reads from its original download.

    Attributes:
        name: how messages name it (e.g. ``"ISIC 2018"``).
        classes: class names in label order (the findings, for a multi-label dataset).
        layout: the expected layout after unpacking and where to get the data, with ``{root}`` standing for the
            dataset folder; every "not found" message ends with it.
    """

    name: str
    classes: tuple[str, ...]
    layout: str

    def layout_for(self, root: str) -> str:
        """The expected layout under ``root``, with the download instructions."""
        return self.layout.format(root=root)

    def missing(self, what: str, root: str) -> FileNotFoundError:
        """The error for a missing part of the dataset: ``what`` is missing, then the expected layout.

        Args:
            what: one sentence naming the missing folder or file (and what was found instead).
            root: the dataset folder the user passed.
        """
        return FileNotFoundError(f"{what}\n{self.layout_for(root)}")

    def not_found(self, root: str) -> FileNotFoundError:
        """The error for a dataset folder that does not exist."""
        return self.missing(f"{self.name} not found: {root!r} does not exist.", root)
