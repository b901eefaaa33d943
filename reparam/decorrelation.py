"""``reparam.decorrelate``: a model with conditional affine decorrelation attached, and the
values of its coefficients (fixed at the local Gaussian conditional, or given: ``freeze``).

The configuration is given (``{child: [parents]}``), edited from a suggestion
(:func:`reparam.suggest_config`) or discovered at the model's first call (``"auto"``).

**Coefficients.** With ``coefficients="gaussian"`` (the default) they are constants, computed
at the first call of the model whose arguments are concrete (e.g. ``SVI.init``, ``MCMC.run``):
the exact local Gaussian conditional of :func:`reparam.initialize` (the hyperparameters at
their Laplace mode, the decorrelated sites at their conditional mode, the coefficients
fitted there). So a decorrelated model run with plain ``numpyro.infer.SVI`` or ``NUTS`` is the
well-conditioned model the coefficients make; SGD cannot move them (on the toy ridge
``y ~ N(mu + a, 0.05)`` SGD moved them from that start to 1.6-2.2 times their value in 2 of
10 seeds, leaving the posterior sd of ``mu`` 0.06-0.10 of the exact one). Call the model
first with the data it will be fitted to: the first call's coefficients stay. The computation
is dense in the involved dims: above :data:`reparam.start.DENSE_LIMIT` of them, or where the
local precision is not positive definite at the start, the coefficients are zero (no shift)
with a warning that names :func:`reparam.fit` (the same start without dense matrices where
the structure allows, refits as the guide moves). ``coefficients="params"`` makes them
``numpyro.param`` sites starting at zero, for SVI to train or an engine to set
(:func:`reparam.freeze`, :func:`reparam.fit`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpyro

from reparam.auto_config import DecorrelationConfig, start_point
from reparam.config import ConfigLike
from reparam.control_flow import narrow_integers
from reparam.handler import DecorrelateMessenger
from reparam.local.analysis import LocalGaussian
from reparam.start import DENSE_LIMIT, initialize

Coefficients = Literal["gaussian", "params"]


def gaussian_start(model: DecorrelateMessenger, args: tuple,
                   kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The coefficients of :func:`reparam.initialize` from the prior median of ``model``'s
    sites (Laplace mode of the others first); ``{}`` (zero start) with a warning where that
    cannot run (module docstring)."""
    analysis = model.clone()
    args, kwargs = narrow_integers((args, kwargs))  # int64 indices under float64 analyses
    point = start_point(model.fn, args, kwargs)
    local = LocalGaussian(analysis, point, *args, **kwargs)
    if local.plan.dim > DENSE_LIMIT:
        _warn(f"the decorrelation involves {local.plan.dim} dims (> {DENSE_LIMIT}), too many "
              "for the dense Gaussian start")
        return {}
    try:
        return dict(initialize(local, point, laplace=True).coefficients)
    except (ValueError, FloatingPointError) as err:
        _warn(str(err))
        return {}


def _warn(reason: str) -> None:
    warnings.warn(
        f"reparam.decorrelate: the coefficients start at zero ({reason}). SGD alone may leave "
        "them far from the ridge they should remove; reparam.fit(model, *args, rng_key=...) "
        "starts from the Laplace mode and refits them.", RuntimeWarning, stacklevel=3)


def decorrelate(
    model: Callable,
    config: ConfigLike | DecorrelationConfig | Literal["auto"] = "auto",
    *,
    rotate: Mapping[str, str] | None = None,
    sequence: str | None = None,
    band: int | None = None,
    markov: bool | Literal["contrasts"] = False,
    dims: Mapping[str, Sequence[str]] | None = None,
    involve: Sequence[str] = (),
    coefficients: Coefficients = "gaussian",
) -> DecorrelateMessenger:
    """Returns ``model`` with conditional affine decorrelation attached.

    For each child ``x`` with parents ``p_k`` the model samples ``u`` (site
    ``f"{x}_decorrelated"``) with ``u = x~ + W(x~) + sum_k S_k(p~_k)`` in rotated coordinates
    (see :mod:`reparam.family`) and recovers ``x`` exactly; the joint density is unchanged.

    Args:
        model: any NumPyro model.
        config: ``{child: [parents]}``, ``{child: reparam.Affine(...)}``, a callable
            ``name -> parents | Affine | None``, a :class:`reparam.DecorrelationConfig` (its
            options are used where the arguments below are not given), or ``"auto"``:
            discovered at the model's first call (:func:`reparam.suggest_config`).
        rotate: axis name -> rotation name (``"helmert"``) for every involved site.
        sequence: axis name coupled within sites (lower-triangular) and banded across sites.
        band: largest lag coupled along ``sequence`` (``None``: dense).
        markov: Markov (bidiagonal inverse) coupling along ``sequence``, ``O(T)`` per child
            (needs an int ``band``); ``"contrasts"``: Markov on the contrasts of the rotated
            axes, dense on each child's mean slice (exact for additive tensor models).
        dims: site name -> axis names, for axes not named by plates. Without it, axes are
            named as :func:`reparam.suggest_config` names them: plates of equal size that
            never meet on one site are one axis, an event axis takes the name of the one plate
            of its size, and random walks' steps share a name.
        involve: further sites analysed with the decorrelated ones but sampled unchanged.
        coefficients: ``"gaussian"``: constants at the local Gaussian conditional computed at
            the first call; ``"params"``: ``numpyro.param`` sites from zero (module docstring).

    Returns:
        The decorrelated model (a callable with the model's signature).

    Raises:
        ValueError: for an unknown ``coefficients``, and as :class:`DecorrelateMessenger` does.
    """
    if coefficients not in ("gaussian", "params"):
        raise ValueError(f"coefficients must be 'gaussian' or 'params', got {coefficients!r}.")
    return DecorrelateMessenger(
        model, config, rotate=rotate, sequence=sequence, band=band, markov=markov, dims=dims,
        involve=involve, fixed_at=gaussian_start if coefficients == "gaussian" else None,
    )


def freeze(model: Callable, coefficients: Mapping[str, Any]) -> Callable:
    """Fixes decorrelation coefficients at given values (e.g. learned by SVI).

    The coefficient sites become constants hidden from outer handlers: SVI does not train them
    and NUTS sees a model without ``numpyro.param`` sites, i.e. a preconditioned model of the
    same posterior. ``coefficients`` may hold other entries too (e.g. all of an SVI result's
    params): only names of the model's own ``numpyro.param`` sites take effect. For a model
    made by :func:`reparam.decorrelate`, every coefficient site is hidden, and those missing
    from ``coefficients`` keep their initial values (no shift, centred), also where the model
    fixes its coefficients itself (``coefficients="gaussian"``): ``coefficients`` replace them.
    """
    if isinstance(model, DecorrelateMessenger) and model.fixed_at is not None:
        model = model.clone()  # the given coefficients replace those it fixes itself
    names = set(coefficients)
    owned = model.coefficient_names if isinstance(model, DecorrelateMessenger) else set()

    def hide(msg: dict) -> bool:
        return msg["type"] == "param" and (msg["name"] in names or msg["name"] in owned)

    return numpyro.handlers.block(
        numpyro.handlers.substitute(model, data=dict(coefficients)), hide_fn=hide
    )
