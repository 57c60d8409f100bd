"""The pure model of a VM's root disk: a chain of layers, bottom to top.

The bottom is the image's base disk (any format the image states) or, for a full clone, a standalone qcow2; every
layer above is a qcow2 overlay whose backing is the layer below. Only the top is written; everything below it is
read-only. Each layer states its format, so nothing is ever probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ChainLayer:
    path: Path
    format: str = "qcow2"


@dataclass(frozen=True)
class Chain:
    """``layers[0]`` is the bottom (the image's disk, or a standalone layer); ``layers[-1]`` the writable top."""

    layers: tuple[ChainLayer, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a disk chain has at least one layer")
        if any(layer.format != "qcow2" for layer in self.layers[1:]):
            raise ValueError("only the bottom of a chain may be other than qcow2 (the layers above have backings)")

    @property
    def top(self) -> ChainLayer:
        return self.layers[-1]

    def node_names(self) -> list[str]:
        """The QEMU node names, bottom to top: ``base`` at the bottom, ``root`` on top (the device's drive),
        ``layer1``... between. A chain of one layer (a standalone disk) is just ``root``."""
        n = len(self.layers)
        return ["root" if i == n - 1 else "base" if i == 0 else f"layer{i}" for i in range(n)]
