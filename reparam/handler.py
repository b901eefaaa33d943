"""The ``decorrelate`` effect handler: conditional affine reparameterization of a NumPyro model.

Usage::

    import reparam
    decorrelated = reparam.decorrelate(model, {"a": ["mu"], "A": ["a", "z"]})

The model code is unchanged. Each configured child site ``x`` is replaced by an auxiliary sample
site ``f"{x}_decorrelated"`` (real support) holding ``u`` of :mod:`reparam.family`, and the
original site becomes deterministic with its value in model coordinates, so ``Predictive``,
posterior samples and downstream code see the same names as the plain model. Parents are read
by name from the values already sampled in the same trace. Coefficients are named
``f"{x}_shift_{parent}"`` and ``f"{x}_within"``: ``numpyro.param`` sites, or constants that a
``fixed_at`` function computes at the first call (:mod:`reparam.decorrelation`, the default of
:func:`reparam.decorrelate`). An ``"auto"`` configuration is found at the first call
(:func:`reparam.suggest_config`), outside the handlers around that call.

Refused at the first trace, as ``ValueError`` s naming the fix: a child inside a
``numpyro.contrib.control_flow.scan`` body (the handler never sees it sampled: use
:func:`reparam.scan_reparam`), a child or parent sampled inside a JAX loop the model runs itself
(``jax.lax.scan`` repeats one draw), and ``rotate`` / ``sequence`` axes or ``dims`` sites that
the model does not have (they would be ignored).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import biject_to
from numpyro.primitives import Messenger

from reparam import decenter
from reparam.auto_config import DecorrelationConfig, site_dims, suggest_config
from reparam.aux_prior import AuxiliaryPrior
from reparam.config import Affine, ConfigLike, as_affine, check_markov
from reparam.control_flow import (
    check_same_trace,
    is_scan_message,
    lax_loop_error,
    outside_handlers,
    scan_call,
    trace_state,
    traced_arguments,
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

# (messenger, args, kwargs) -> coefficients: computes the values of fixed coefficients
FixedCoefficients = Callable[["DecorrelateMessenger", tuple, dict], Mapping[str, Any]]


class DecorrelateMessenger(Messenger):
    """Effect handler that applies conditional affine reparameterizations.

    Args:
        fn: the model.
        config: child name -> parent names (or :class:`Affine`), a callable taking a site
            name and returning one of those or ``None``, a
            :class:`reparam.DecorrelationConfig` (its options unless given here) or
            ``"auto"`` (:meth:`resolve` finds it at the first call).
        rotate: axis name -> rotation name, applied to every involved site having that axis.
        sequence: name of the axis coupled within sites and banded across sites.
        band: largest lag coupled along ``sequence`` (``None``: all lags).
        markov: couple along ``sequence`` in the Markov form of :mod:`reparam.family` (``O(T)``
            per child; needs ``sequence`` and an int ``band`` for the parent couplings).
            ``"contrasts"``: Markov on the contrasts of the rotated axes, dense on each child's
            mean slice (``Structure.dense_mean``; ``band=None`` allowed: dense parent couplings
            along ``sequence``), the exact structure for an additive tensor model.
        dims: site name -> one axis name per axis of the site's value (overrides plate names);
            without it the axes are named at the first call as :func:`reparam.suggest_config`
            names them (:meth:`resolve`).
        involve: further sites to include in the local Gaussian analysis
            (:mod:`reparam.local.analysis`: Newton step, guide initialisation) although they are
            sampled unchanged.
        fixed_at: ``(messenger, args, kwargs) -> coefficients``: fixes the coefficients at
            the values it returns for the first call with concrete arguments (missing ones
            at zero); ``None``: they are ``numpyro.param`` sites starting at zero.
    """

    def __init__(
        self,
        fn: Callable | None = None,
        config: ConfigLike | DecorrelationConfig | Literal["auto"] | None = None,
        *,
        rotate: Mapping[str, str] | None = None,
        sequence: str | None = None,
        band: int | None = None,
        markov: bool | Literal["contrasts"] = False,
        dims: Mapping[str, Sequence[str]] | None = None,
        involve: Sequence[str] = (),
        fixed_at: FixedCoefficients | None = None,
    ) -> None:
        self._auto = config == "auto"
        self._align = dims is None and not self._auto and not isinstance(
            config, DecorrelationConfig)
        if isinstance(config, DecorrelationConfig):  # its options, unless given here
            found, config = config, dict(config.config)
            rotate, sequence = rotate or found.rotate, sequence or found.sequence
            markov, dims = markov or found.markov, {**found.dims, **(dims or {})}
        if not self._auto and (config is None or not (
                isinstance(config, Mapping) or callable(config))):
            raise TypeError("config must be a dict {child: [parents]}, a callable, a "
                            "reparam.DecorrelationConfig or 'auto'.")
        if band is not None and (not isinstance(band, int) or band < 0):
            raise ValueError(f"band must be a non-negative int or None, got {band!r}.")
        self._options = {"rotate": rotate, "sequence": sequence, "band": band,
                         "markov": markov, "dims": dims}
        self.involve = tuple(involve)
        self.fixed_at = fixed_at
        self._start: dict[str, Array] | None = None
        self._call: tuple[tuple, dict] | None = None
        self._configure({} if self._auto else config, rotate, sequence, band, markov, dims)
        self._layouts: dict[str, SiteLayout] = {}
        self._rotated: dict[str, Array] = {}
        self._values: dict[str, Array] = {}
        self._axes: set[str] = set()
        self._inner: set[str] = set()
        self._trace = None
        self.coefficient_names: set[str] = set()
        super().__init__(fn)

    # -- configuration ----------------------------------------------------------------------
    def _configure(self, config: Any, rotate: Mapping[str, str] | None, sequence: str | None,
                   band: int | None, markov: Any, dims: Mapping[str, Sequence[str]] | None
                   ) -> None:
        check_markov(markov, sequence, band)
        for rotation in (rotate or {}).values():
            get_rotation(rotation)
        self.config = config
        self.structure = Structure(
            rotations=tuple(sorted((rotate or {}).items())), sequence=sequence, band=band,
            markov=bool(markov), dense_mean=markov == "contrasts",
        )
        self.dims = dict(dims or {})

    @property
    def resolved(self) -> bool:
        """Whether the configuration and axis names are known (an ``"auto"`` configuration,
        and the axis names where ``dims`` was not given, are found at the first call)."""
        return not (self._auto or self._align)

    def resolve(self, *args: Any, **kwargs: Any) -> None:
        """Discovers an ``"auto"`` configuration from the model run with these arguments
        (:func:`reparam.suggest_config`; options given to the handler take precedence), or,
        for a given configuration without ``dims``, names the axes as it does (plates of
        equal size that never meet are one axis, an event axis takes the name of the one
        plate of its size, a random walk's steps one name)."""
        if self._align:
            self._align = False
            with outside_handlers():
                try:
                    self.dims = site_dims(self.fn, args, kwargs)
                except Exception:  # noqa: BLE001 - e.g. a sample in a JAX loop: the trace
                    self.dims = {}  # that follows refuses the model with the fix
        if not self._auto:
            return
        if traced_arguments(args, kwargs):
            raise ValueError(
                "reparam.decorrelate(model) finds its configuration at the model's first call, "
                "which here runs inside a JAX transformation (jit, vmap, grad); call the "
                "decorrelated model once with concrete arguments first, or pass the config "
                "(reparam.suggest_config(model, *args) returns it).")
        with outside_handlers():
            found = suggest_config(self.fn, *args, sequence=self._options["sequence"],
                                   **kwargs)
        given = self._options
        self._configure(found.config, given["rotate"] or found.rotate,
                        given["sequence"] or found.sequence, given["band"],
                        given["markov"] or found.markov, {**found.dims, **(given["dims"] or {})})
        self._auto = False

    def suggestion(self) -> DecorrelationConfig:
        """The configuration in use, as :func:`reparam.suggest_config` returns one."""
        if self._auto:
            raise ValueError("The 'auto' configuration is found at the model's first call; "
                             "call the model (or reparam.suggest_config) first.")
        config = {n: self.affine_for(n) for n in self.config} \
            if isinstance(self.config, Mapping) else {}
        markov = "contrasts" if self.structure.dense_mean else self.structure.markov
        return DecorrelationConfig(config=config, rotate=dict(self.structure.rotations),
                                   sequence=self.structure.sequence, markov=markov,
                                   dims={k: tuple(v) for k, v in self.dims.items()})

    def clone(self, *args: Any, fixed_at: FixedCoefficients | None = None,
              **kwargs: Any) -> DecorrelateMessenger:
        """The same decorrelation of the same model, its configuration resolved (with the
        model arguments ``args, kwargs`` where it is ``"auto"`` and not yet known); its
        coefficients ``numpyro.param`` sites (default) or fixed by ``fixed_at``."""
        self.resolve(*args, **kwargs)
        structure = self.structure
        markov = "contrasts" if structure.dense_mean else structure.markov
        return DecorrelateMessenger(
            self.fn, self.config, rotate=dict(structure.rotations), sequence=structure.sequence,
            band=structure.band, markov=markov, dims=self.dims, involve=self.involve,
            fixed_at=fixed_at,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.resolve(*args, **kwargs)
        self._call = (args, kwargs)
        return super().__call__(*args, **kwargs)

    def _coefficient(self, name: str, default: Array) -> Array:
        """Coefficient ``name``: a ``numpyro.param`` starting at ``default``, or, with
        ``fixed_at``, the constant it computes at the first call whose arguments are concrete
        (:mod:`reparam.decorrelation`)."""
        if self.fixed_at is None:
            return numpyro.param(name, default)
        return jnp.asarray(self._fixed_coefficients().get(name, default))

    def _fixed_coefficients(self) -> Mapping[str, Array]:
        if self._start is not None:
            return self._start
        args, kwargs = self._call if self._call is not None else ((), {})
        if traced_arguments(args, kwargs):
            warnings.warn(
                "reparam.decorrelate: the model's first call ran inside a JAX transformation, "
                "where its coefficients cannot be computed, so this trace uses zero "
                "coefficients; call the decorrelated model once with concrete arguments (e.g. "
                "SVI.init, or MCMC.run, outside jax.jit) first.", RuntimeWarning, stacklevel=4)
            return {}
        with outside_handlers():  # the start runs the model on its own
            self._start = dict(self.fixed_at(self, args, kwargs))
        return self._start

    def affine_for(self, name: str) -> Affine | None:
        """The configuration of site ``name`` as a child, or ``None``."""
        if name.endswith(AUX_SUFFIX):
            return None
        entry = self.config.get(name) if isinstance(self.config, Mapping) else self.config(name)
        return None if entry is None else as_affine(name, entry)

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
            params[key] = self._coefficient(child_param(name, key), init)
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

        prior = AuxiliaryPrior(base, to_model, to_aux, jacobian)
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
        if msg.get("is_observed"):  # never a parent (its support may be discrete)
            self._axes.update(axis_names(msg, self.dims))
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
