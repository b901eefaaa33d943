"""The configuration of :func:`reparam.decorrelate`: one :class:`Affine` per child site.

A config maps each child site to the earlier ("parent") sites it is shifted by, as a list of
names or an :class:`Affine`; :func:`reparam.suggest_config` builds one from a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Affine:
    """Configuration of one child site.

    Attributes:
        parents: names of earlier sites the child is shifted by.
        within: couple the child with itself along the sequence axis (lower-triangular).
        decenter: partial non-centring w.r.t. the child's prior scale
            (:mod:`reparam.decenter`; applies when the prior has one scalar ``scale``). Off by
            default: it helps where that scale is itself a latent site (a funnel), which
            :func:`reparam.suggest_config` detects; a list config does not decentre.
    """

    parents: tuple[str, ...] = ()
    within: bool = True
    decenter: bool = False


ConfigEntry = "Sequence[str] | Affine"
ConfigLike = Mapping[str, ConfigEntry] | Callable[[str], "ConfigEntry | None"]


def check_markov(markov: Any, sequence: str | None, band: int | None) -> None:
    """Validates ``decorrelate``'s ``markov`` option against ``sequence`` and ``band``."""
    if markov not in (True, False, "contrasts"):
        raise ValueError(f"markov must be True, False or 'contrasts', got {markov!r}.")
    if markov == "contrasts" and sequence is None:
        raise ValueError("markov='contrasts' couples along a sequence axis: give `sequence=`.")
    if markov is True and (sequence is None or band is None):
        raise ValueError(
            "markov=True couples along a sequence axis with banded parent couplings: give "
            "`sequence=` and an int `band=` (e.g. band=2)."
        )


def as_affine(name: str, entry: Any) -> Affine:
    """The :class:`Affine` of config entry ``entry`` of child ``name`` (a list of parents
    becomes ``Affine(parents)``).

    Raises:
        TypeError: if ``entry`` is neither a sequence of names nor an :class:`Affine`.
    """
    if isinstance(entry, Affine):
        return entry
    if isinstance(entry, str) or not isinstance(entry, Sequence):
        raise TypeError(
            f"Config entry for {name!r} must be a list of parent site names or a "
            f"reparam.Affine, got {entry!r}."
        )
    return Affine(parents=tuple(entry))
