"""The ``decorrelate`` effect handler: conditional affine reparameterization of a NumPyro model.

Usage::

    import reparam
    decorrelated = reparam.decorrelate(model, {"a": ["mu"], "A": ["a", "z"]})

The model code is unchanged. Each configured child site ``x`` is replaced by an auxiliary sample
site ``f"{x}_decorrelated"`` (real support) holding ``u`` of :mod:`reparam.family`, and the
original site becomes deterministic with its value in model coordinates, so ``Predictive``,
posterior samples and downstream code see the same names as the plain model. Parents are read
by name from the values already sampled in the same trace. Coefficients are
``numpyro.param`` sites named ``f"{x}_shift_{parent}"`` and ``f"{x}_within"``.

Refused at the first trace, as ``ValueError`` s naming the fix: a child inside a
``numpyro.contrib.control_flow.scan`` body (the handler never sees it sampled: use
:func:`reparam.scan_reparam`), a child or parent sampled inside a JAX loop the model runs itself
(``jax.lax.scan`` repeats one draw), and ``rotate`` / ``sequence`` axes or ``dims`` sites that
the model does not have (they would be ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import biject_to, constraints
from numpyro.primitives import Messenger

from reparam import decenter
from reparam.control_flow import (
    check_same_trace,
    is_scan_message,
    lax_loop_error,
    scan_call,
    trace_state,
    traced_names,
)
from reparam.decenter import prior_scale
from reparam.family import (
    ChildFamily,
    ParentCoupling,
    Structure,
    aux_to_model,
    model_to_aux,
    rotate_site,
)
from reparam.names import AUX_SUFFIX, child_param
from reparam.rotations import get_rotation
from reparam.scan.strategies import probe_body
from reparam.sites import SiteLayout, axis_names, check_axes_exist, site_layout, unconstrain

_NAME = "reparam.decorrelate"


@dataclass(frozen=True)
class Affine:
    """Configuration of one child site.

    Attributes:
        parents: names of earlier sites the child is shifted by.
        within: couple the child with itself along the sequence axis (lower-triangular).
        decenter: allow partial non-centring w.r.t. the child's prior scale
            (:mod:`reparam.decenter`; applies when the prior has one scalar ``scale``).
    """

    parents: tuple[str, ...] = ()
    within: bool = True
    decenter: bool = True


ConfigEntry = "Sequence[str] | Affine"
ConfigLike = Mapping[str, ConfigEntry] | Callable[[str], "ConfigEntry | None"]


def _check_markov(markov: Any, sequence: str | None, band: int | None) -> None:
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


def _as_affine(name: str, entry: Any) -> Affine:
    if isinstance(entry, Affine):
        return entry
    if isinstance(entry, str) or not isinstance(entry, Sequence):
        raise TypeError(
            f"Config entry for {name!r} must be a list of parent site names or a "
            f"reparam.Affine, got {entry!r}."
        )
    return Affine(parents=tuple(entry))


class _AuxiliaryPrior(dist.Distribution):
    """Density of ``u`` given the parents: ``p(u) = p_x(x(u))`` (unit Jacobian).

    ``base`` is the child's prior in (unconstrained) model coordinates; ``to_model`` and
    ``to_aux`` are the exact inverse pair between ``u`` and those coordinates.
    """

    support = constraints.real

    def __init__(
        self,
        base: dist.Distribution,
        to_model: Callable,
        to_aux: Callable,
        log_jacobian: Array | float = 0.0,
    ):
        self.base = base
        self.to_model = to_model
        self.to_aux = to_aux
        self.log_jacobian = log_jacobian
        super().__init__(base.batch_shape, base.event_shape)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return self.to_aux(self.base.sample(key, sample_shape))

    def log_prob(self, value: Array) -> Array:
        return self.base.log_prob(self.to_model(value)) + self.log_jacobian


class DecorrelateMessenger(Messenger):
    """Effect handler that applies conditional affine reparameterizations.

    Args:
        fn: the model.
        config: child name -> parent names (or :class:`Affine`), or a callable taking a site
            name and returning one of those or ``None``.
        rotate: axis name -> rotation name, applied to every involved site having that axis.
        sequence: name of the axis coupled within sites and banded across sites.
        band: largest lag coupled along ``sequence`` (``None``: all lags).
        markov: couple along ``sequence`` in the Markov form of :mod:`reparam.family` (``O(T)``
            per child; needs ``sequence`` and an int ``band`` for the parent couplings).
            ``"contrasts"``: Markov on the contrasts of the rotated axes, dense on each child's
            mean slice (``Structure.dense_mean``; ``band=None`` allowed: dense parent couplings
            along ``sequence``), the exact structure for an additive tensor model.
        dims: site name -> one axis name per axis of the site's value (overrides plate names).
        involve: further sites to include in the local Gaussian analysis
            (:mod:`reparam.local.analysis`: Newton step, guide initialisation) although they are
            sampled unchanged.
    """

    def __init__(
        self,
        fn: Callable | None = None,
        config: ConfigLike | None = None,
        *,
        rotate: Mapping[str, str] | None = None,
        sequence: str | None = None,
        band: int | None = None,
        markov: bool | Literal["contrasts"] = False,
        dims: Mapping[str, Sequence[str]] | None = None,
        involve: Sequence[str] = (),
    ) -> None:
        if config is None or not (isinstance(config, Mapping) or callable(config)):
            raise TypeError("config must be a dict {child: [parents]} or a callable.")
        if band is not None and (not isinstance(band, int) or band < 0):
            raise ValueError(f"band must be a non-negative int or None, got {band!r}.")
        _check_markov(markov, sequence, band)
        for rotation in (rotate or {}).values():
            get_rotation(rotation)
        self.config = config
        self.structure = Structure(
            rotations=tuple(sorted((rotate or {}).items())), sequence=sequence, band=band,
            markov=bool(markov), dense_mean=markov == "contrasts",
        )
        self.dims = dict(dims or {})
        self.involve = tuple(involve)
        self._layouts: dict[str, SiteLayout] = {}
        self._rotated: dict[str, Array] = {}
        self._values: dict[str, Array] = {}
        self._axes: set[str] = set()
        self._inner: set[str] = set()
        self._trace = None
        self.coefficient_names: set[str] = set()
        super().__init__(fn)

    # -- configuration ----------------------------------------------------------------------
    def affine_for(self, name: str) -> Affine | None:
        """The configuration of site ``name`` as a child, or ``None``."""
        if name.endswith(AUX_SUFFIX):
            return None
        entry = self.config.get(name) if isinstance(self.config, Mapping) else self.config(name)
        return None if entry is None else _as_affine(name, entry)

    def family(
        self, child: SiteLayout, parents: Sequence[SiteLayout], affine: Affine, fn: Any
    ) -> ChildFamily:
        """The family of a child with prior ``fn`` (decentred when ``fn`` has a scalar scale
        and the child has real support)."""
        couplings = tuple(ParentCoupling(p, child, self.structure) for p in parents)
        decenter_ok = affine.decenter and child.real_support and prior_scale(fn) is not None
        return ChildFamily(
            child, couplings, self.structure, within=affine.within, decenter=decenter_ok
        )

    def check_config(self, site_names: Sequence[str]) -> None:
        """Raises ``ValueError`` for config entries naming sites the model never sampled."""
        if isinstance(self.config, Mapping):
            unknown = [n for n in self.config if n not in site_names]
            if unknown:
                traced = traced_names(site_names)
                hint = (
                    f" The sites {traced} were named from a traced value (e.g. f\"x_{{i}}\" "
                    "inside a scan body): give a scan body site one fixed name."
                    if traced
                    else ""
                )
                raise ValueError(
                    f"decorrelate config names sites {unknown} that the model does not "
                    f"sample; the model's sample sites are {list(site_names)}.{hint}"
                )

    def check_axes(self, site_names: Sequence[str]) -> None:
        """Refuses ``dims`` entries for sites the model never sampled, and ``rotate`` or
        ``sequence`` axes that no site has (they would be silently ignored).

        Raises:
            ValueError: naming the unknown sites or axis and those that exist.
        """
        unknown = sorted(set(self.dims) - set(site_names))
        if unknown:
            raise ValueError(
                f"decorrelate dims= names sites {unknown} that the model does not sample; "
                f"the model's sites are {sorted(site_names)}."
            )
        requested = [("rotate", axis) for axis in self.structure.rotate]
        if self.structure.sequence is not None:
            requested.append(("sequence", self.structure.sequence))
        check_axes_exist(requested, self._axes, "decorrelate")

    def _check_child(self, name: str, affine: Affine, msg: dict) -> None:
        check_same_trace(self._trace, name, _NAME)
        if msg["is_observed"]:
            raise ValueError(
                f"Site {name!r} is observed; decorrelation applies to latent sites only. "
                "Remove it from the decorrelate config."
            )
        inner = [p for p in affine.parents if p in self._inner]
        if inner:
            raise lax_loop_error(inner[0], _NAME)
        missing = [p for p in affine.parents if p not in self._layouts]
        if missing:
            raise ValueError(
                f"Parent(s) {missing} of {name!r} have not been sampled before {name!r}. A "
                "parent must be a site sampled earlier in the same model run; reorder the "
                "config or the model."
            )

    def _check_scan_body(self, msg: dict) -> None:
        """Refuses configured children inside a ``numpyro.contrib.control_flow.scan`` body:
        the handler never sees them sampled (the body runs under ``handlers.block`` and its
        sites are replayed afterwards), so they would be re-drawn from their prior."""
        if isinstance(self.config, Mapping) and all(n in self._layouts for n in self.config):
            return  # every child already sampled: none can be in this body
        call = scan_call(msg)
        sites = probe_body(call.f, call.init, call.first_input).sites
        inside = sorted(n for n in sites if self.affine_for(n) is not None)
        if inside:
            raise ValueError(
                f"decorrelate config names {inside}, sampled inside a "
                "numpyro.contrib.control_flow.scan body: decorrelate does not reach sites in a "
                "scan body (NumPyro runs the body under handlers.block and replays its sites "
                "afterwards), so they would be re-drawn from their prior. Remove them from the "
                "decorrelate config and use reparam.scan_reparam(model, "
                f"{{{inside[0]!r}: reparam.StepAffine(parents)}}) (or NonCentered, "
                "LearnableCentering, GaussianConditional) for sites inside the body."
            )

    def _layout(self, msg: dict) -> SiteLayout:
        self._axes.update(axis_names(msg, self.dims))
        return site_layout(msg, self.dims)

    # -- effect handling --------------------------------------------------------------------
    def __enter__(self):
        self._layouts, self._rotated, self._values = {}, {}, {}
        self._axes, self._inner, self._trace = set(), set(), trace_state()
        return super().__enter__()

    def process_message(self, msg: dict) -> None:
        if is_scan_message(msg):
            self._check_scan_body(msg)
        if msg["type"] != "sample":
            return
        affine = self.affine_for(msg["name"])
        if affine is None:
            return
        name = msg["name"]
        self._check_child(name, affine, msg)
        child = self._layout(msg)
        fn = msg["fn"]
        family = self.family(child, [self._layouts[p] for p in affine.parents], affine, fn)
        params = {}
        for key, init in family.param_inits().items():
            self.coefficient_names.add(child_param(name, key))
            params[key] = numpyro.param(child_param(name, key), init)
        parents_rot = {p: self._rotated_value(p) for p in affine.parents}
        base = fn
        if not child.real_support:
            base = dist.TransformedDistribution(fn, biject_to(fn.support).inv)
        scale = prior_scale(fn) if family.decenter else None
        jacobian = (
            decenter.log_jacobian(params, scale, fn.event_dim) if scale is not None else 0.0
        )

        def to_model(u: Array) -> Array:
            return aux_to_model(family, u, parents_rot, params, scale)

        def to_aux(x: Array) -> Array:
            return model_to_aux(family, x, parents_rot, params, scale)

        prior = _AuxiliaryPrior(base, to_model, to_aux, jacobian)
        aux = numpyro.sample(name + AUX_SUFFIX, prior)
        unconstrained = to_model(aux)
        self._layouts[name], self._values[name] = child, unconstrained
        msg["type"] = "deterministic"
        msg["value"] = unconstrained if child.real_support else biject_to(fn.support)(unconstrained)
        for key in list(msg.keys()):
            if key not in ("type", "name", "value", "cond_indep_stack"):
                del msg[key]

    def postprocess_message(self, msg: dict) -> None:
        if msg["type"] not in ("sample", "deterministic") or msg["name"].endswith(AUX_SUFFIX):
            return
        name = msg["name"]
        if name in self._values:  # a decorrelated child, recorded when it was sampled
            return
        if self._trace is not None and trace_state() != self._trace:
            self._inner.add(name)  # inside a JAX loop of the model: refused if a parent
            return
        self._layouts[name] = self._layout(msg)
        fn = msg.get("fn")
        self._values[name] = msg["value"] if fn is None else unconstrain(msg["value"], fn.support)

    def __exit__(self, exc_type, exc_value, traceback):
        seen = set(self._layouts)
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None:
            self.check_config(sorted(seen))
            self.check_axes(sorted(seen))
        return result

    def _rotated_value(self, name: str) -> Array:
        if name not in self._rotated:
            self._rotated[name] = rotate_site(
                self.structure, self._layouts[name], self._values[name]
            )
        return self._rotated[name]


def decorrelate(
    model: Callable,
    config: ConfigLike,
    *,
    rotate: Mapping[str, str] | None = None,
    sequence: str | None = None,
    band: int | None = None,
    markov: bool | Literal["contrasts"] = False,
    dims: Mapping[str, Sequence[str]] | None = None,
    involve: Sequence[str] = (),
) -> DecorrelateMessenger:
    """Returns ``model`` with conditional affine decorrelation attached.

    For each child ``x`` with parents ``p_k`` the model samples ``u`` (site
    ``f"{x}_decorrelated"``) with ``u = x~ + W(x~) + sum_k S_k(p~_k)`` in rotated coordinates
    (see :mod:`reparam.family`) and recovers ``x`` exactly; the joint density is unchanged.

    Args:
        model: any NumPyro model.
        config: ``{child: [parents]}``, ``{child: reparam.Affine(...)}``, or a callable
            ``name -> parents | Affine | None``.
        rotate: axis name -> rotation name (``"helmert"``) for every involved site.
        sequence: axis name coupled within sites (lower-triangular) and banded across sites.
        band: largest lag coupled along ``sequence`` (``None``: dense).
        markov: Markov (bidiagonal inverse) coupling along ``sequence``, ``O(T)`` per child
            (needs an int ``band``); ``"contrasts"``: Markov on the contrasts of the rotated
            axes, dense on each child's mean slice (exact for additive tensor models).
        dims: site name -> axis names, for axes not named by plates.
        involve: further sites analysed with the decorrelated ones but sampled unchanged.

    Returns:
        The decorrelated model (a callable with the model's signature).
    """
    return DecorrelateMessenger(
        model, config, rotate=rotate, sequence=sequence, band=band, markov=markov, dims=dims,
        involve=involve,
    )


def freeze(model: Callable, coefficients: Mapping[str, Any]) -> Callable:
    """Fixes decorrelation coefficients at given values (e.g. learned by SVI).

    The coefficient sites become constants hidden from outer handlers: SVI does not train them
    and NUTS sees a model without ``numpyro.param`` sites, i.e. a preconditioned model of the
    same posterior. ``coefficients`` may hold other entries too (e.g. all of an SVI result's
    params): only names of the model's own ``numpyro.param`` sites take effect. For a model
    made by :func:`decorrelate`, every coefficient site is hidden, and those missing from
    ``coefficients`` keep their initial values (no shift, centred).
    """
    names = set(coefficients)
    owned = model.coefficient_names if isinstance(model, DecorrelateMessenger) else set()

    def hide(msg: dict) -> bool:
        return msg["type"] == "param" and (msg["name"] in names or msg["name"] in owned)

    return numpyro.handlers.block(
        numpyro.handlers.substitute(model, data=dict(coefficients)), hide_fn=hide
    )
