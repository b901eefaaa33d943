"""Data-parallel fits: the cells split over devices give the single-device fit to float
tolerance (4 CPU devices simulated with ``XLA_FLAGS`` in a subprocess, since the flag must be
set before JAX starts), and the placement rules and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from reparam.infer.sharding import resolve_devices, shard_cells, split_plan

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np, tensorfact
    from tests.test_tensorfact import shared_fits
    assert len(jax.devices()) == 4, jax.devices()
    fits = {n: tensorfact.fit(shared_fits.data(), shared_fits.spec(), num_steps=150,
                              stop_at_plateau=False, num_draws=200, seed=0, devices=n)
            for n in (1, 4)}
    one, four = fits[1], fits[4]
    y = four._svi.args[0]
    print(json.dumps({
        "devices": [one.info["devices"], four.info["devices"]],
        "shards": len(y.sharding.device_set), "spec": list(y.sharding.spec),
        "loss_rel": float(np.max(np.abs(four.losses - one.losses) / np.abs(one.losses))),
        "mean_diff": {k: float(np.max(np.abs(four.posterior[k].mean(("chain", "draw"))
                                             - one.posterior[k].mean(("chain", "draw")))))
                      for k in ("mu", "a", "z")},
        "sd_a": float(one.posterior["a"].std(("chain", "draw")).min()),
    }))
""")


def test_four_devices_give_the_one_device_fit():
    """The 8 x 5 x 12 tensor is split along its year axis (12 = 4 x 3) over 4 devices; every
    loss of 150 SVI steps agrees with the one-device run to 1e-4 relative, and the posterior
    means to a small fraction of the smallest posterior sd."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["devices"] == [1, 4] and out["shards"] == 4, out
    assert out["spec"] == [None, None, "cells"], out  # split along year (12 = 4 x 3)
    assert out["loss_rel"] < 1e-4, out
    assert max(out["mean_diff"].values()) < 0.05 * out["sd_a"], out


def test_split_plan_takes_the_most_devices_that_divide_an_axis():
    assert split_plan((8, 5, 12), 4) == (2, 4)  # 4 divides 8 and 12: the longer axis
    assert split_plan((8, 5, 12), 3) == (2, 3)
    assert split_plan((5, 7, 11), 4) == (0, 1)  # no axis divisible by 2, 3 or 4: no split
    assert split_plan((6, 5, 7), 4) == (0, 3)  # 4 divides nothing, 3 divides 6
    assert split_plan((8, 5, 12), 1) == (0, 1)


def test_one_device_places_the_arrays_unsplit():
    arrays, count = shard_cells([jax.numpy.zeros((2, 3)), jax.numpy.ones((2, 3))], "auto")
    assert count == len({d for a in arrays for d in a.sharding.device_set}) == 1


@pytest.mark.parametrize(("devices", "error", "match"), [
    (0, ValueError, r"devices=0 but \d+ device\(s\) are visible; pass a number from 1"),
    (10_000, ValueError, "xla_force_host_platform_device_count"),
    ("all", ValueError, "devices must be 'auto', a number or a list of devices"),
    (True, TypeError, "devices must be 'auto', a number or a non-empty list"),
    ([], TypeError, "non-empty list of jax.Device"),
])
def test_bad_devices_are_refused(devices, error, match):
    with pytest.raises(error, match=match):
        resolve_devices(devices)


def test_fit_checks_devices_before_fitting():
    import numpy as np

    import tensorfact

    with pytest.raises(ValueError, match="devices=0"):
        tensorfact.fit(np.zeros((3, 2, 4)), dims=("i", "j", "t"), devices=0)
    with pytest.raises(ValueError, match="shard_cells needs arrays of one shape"):
        shard_cells([np.zeros(2), np.zeros(3)])
