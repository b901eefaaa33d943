"""The record of how a fit was made: the typed contract between the methods that build a
:class:`~tensorfact.results.fit.Fit`, the fit itself and its file.

A record holds what is needed to redraw the posterior and to rebuild or continue the trained
guide, and nothing else; :mod:`tensorfact.results.io` writes it as JSON and reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SVIRecord:
    """How the SVI guide was trained.

    Attributes:
        learning_rate: the default optimizer's learning rate.
        guide: ``"normal"`` or ``"lowrank"``.
        custom_optimizer: trained with a user's ``optimizer=`` (which cannot be saved).
        batch_size: cells per minibatch (``None``: every cell).
    """

    learning_rate: float
    guide: str
    custom_optimizer: bool = False
    batch_size: int | None = None


@dataclass(frozen=True)
class NUTSRecord:
    """The NUTS settings of a fit (``method="nuts"`` or ``"exact"``)."""

    num_warmup: int
    num_samples: int
    num_chains: int


@dataclass(frozen=True)
class FitRecord:
    """How a fit was made.

    Attributes:
        key: the fit's PRNG key (raw ``uint32[2]`` as integers); every random draw of the
            fit derives from it (posterior draws: ``fold_in(key, 1)``; predictive noise:
            the integer seed, or this key for a fit seeded with a key).
        sites: the latent sites in model coordinates.
        returned: the sites drawn into the posterior (latents, deterministic effects and
            noise sites).
        num_draws: draws taken from the guide (SVI).
        svi: the SVI training, for fits with a trained guide.
        nuts: the NUTS settings, for fits that ran NUTS.
    """

    key: tuple[int, ...]
    sites: tuple[str, ...]
    returned: tuple[str, ...]
    num_draws: int = 0
    svi: SVIRecord | None = None
    nuts: NUTSRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (inverse: :meth:`from_dict`)."""
        out = asdict(self)
        out["key"], out["sites"], out["returned"] = (
            list(self.key), list(self.sites), list(self.returned))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitRecord:
        """The record described by :meth:`to_dict` output.

        Raises:
            ValueError: for a description with fields this version does not know.
        """
        fields = dict(data)
        known = {"key", "sites", "returned", "num_draws", "svi", "nuts"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"Unknown fields {unknown} in a saved fit record.")
        svi, nuts = fields.pop("svi", None), fields.pop("nuts", None)
        return cls(
            key=tuple(int(k) for k in fields.pop("key")),
            sites=tuple(fields.pop("sites")), returned=tuple(fields.pop("returned")),
            svi=SVIRecord(**svi) if svi else None, nuts=NUTSRecord(**nuts) if nuts else None,
            **fields,
        )
