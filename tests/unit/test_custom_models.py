"""Your own network (model.name "package.module:ClassName", genpar_models/models/custom/):
the examples' classes train with the built-in steps and round-trip through export; every kind
of bad input is refused at config-check time, naming the path and what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genpar_models.config import PipelineConfig, TrainConfig, load_config
from genpar_models.errors import CheckpointError, ConfigError
from genpar_models.models import check_model_config, get_family
from genpar_models.models.export import (
    build_model,
    build_model_from_spec,
    export_model,
    load_model,
)
from tests.conftest import REPO
from tests.helpers import family_steps

VAE_PATH = "examples.custom_vae:TinyVAE"
GAN_PATH = "examples.custom_gan:TinyGAN"


def _config(name: str, **model) -> PipelineConfig:
    """tiny.yaml with model.name `name` (the VAE's likelihood back to its default)."""
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    section = {"name": name, "latent_dim": 4, **model}
    return cfg.model_copy(update={"model": type(cfg.model)(**section)})


@pytest.mark.parametrize("path", [VAE_PATH, GAN_PATH])
def test_example_configs_load_and_check(path: str) -> None:
    kind = path.split(":")[0].split("_")[-1]
    cfg = load_config(REPO / "examples" / f"custom_{kind}.yaml")
    assert cfg.model.name == path
    family = check_model_config(cfg)
    assert family.name == path and get_family(path) is family
    assert (family.likelihood is not None) == (kind == "vae")


def test_custom_vae_trains_with_the_vae_steps_and_round_trips(tmp_path: Path) -> None:
    cfg = _config(VAE_PATH, options={"hidden": 16})
    family = check_model_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8))
    spec = model.model_spec()
    # defaults filled in by the class's own model_spec()
    assert spec == {
        "name": VAE_PATH,
        "image_shape": [1, 8, 8],
        "latent_dim": 4,
        "options": {"hidden": 16, "layers": 1},
    }
    steps = family_steps(model, TrainConfig(lr=1e-2, max_steps=10))
    # two binary patterns: learnable (noise would stay at 64 ln 2 nats)
    patterns = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = patterns.repeat(16, 1, 1, 1)
    noise = torch.Generator().manual_seed(1)
    losses = [float(steps.step(x, noise)["train/loss"]) for _ in range(25)]
    assert losses[-1] < losses[0] * 0.9  # it learns
    sample = model.sample(5, generator=torch.Generator().manual_seed(2))
    assert sample.shape == (5, 1, 8, 8) and sample.min() >= 0 and sample.max() <= 1
    terms = family.likelihood(model.eval(), x, torch.Generator().manual_seed(3), 4)
    assert set(terms) == {"recon", "kl", "elbo", "iw_bound"}
    assert all(v.shape == (32,) and torch.isfinite(v).all() for v in terms.values())
    assert torch.allclose(terms["elbo"], -(terms["recon"] + terms["kl"]))
    assert family.reconstruct(model, x).shape == x.shape
    assert not family.reports_bits_per_dim(spec, "none")  # the class does not claim it

    export_model(tmp_path, spec=spec, meta={}, module=model)
    stored = json.loads((tmp_path / "model.json").read_text())["model_spec"]
    assert stored == spec
    again, _ = load_model(tmp_path)
    g = torch.Generator().manual_seed(4)
    assert torch.equal(again.sample(3, generator=g), model.sample(3, generator=g.manual_seed(4)))
    with pytest.raises(CheckpointError):  # spec rebuilt with other options: the weights differ
        broken = tmp_path / "other"
        export_model(
            broken, spec={**spec, "options": {"hidden": 8}}, meta={}, state=model.state_dict()
        )
        load_model(broken)


def test_custom_gan_trains_with_the_gan_steps(tmp_path: Path) -> None:
    cfg = _config(GAN_PATH, options={"hidden": 16}, gan_loss="bce", ema_decay=0.9)
    family = check_model_config(cfg)
    assert family.likelihood is None and family.sampling_net == "generator"
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8))
    assert model.gan_loss == "bce"  # from model.gan_loss, not the spec
    assert sorted({k.split(".")[0] for k in model.state_dict()}) == [
        "discriminator",
        "generator",
    ]
    assert model.discriminator.uses_batch_statistics is False  # no BatchNorm in it
    steps = family_steps(model, TrainConfig(lr=1e-3, max_steps=10))
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    metrics = steps.step(x, torch.Generator().manual_seed(0))
    assert {"train/loss_d", "train/loss_g"} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())
    sample = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert sample.shape == (4, 1, 8, 8) and sample.min() >= 0 and sample.max() <= 1
    export_model(tmp_path, spec=model.model_spec(), meta={}, module=model)
    again, _ = load_model(tmp_path)
    g = torch.Generator()
    assert torch.equal(
        again.sample(2, generator=g.manual_seed(5)), model.sample(2, generator=g.manual_seed(5))
    )


def _refused(name: str, *patterns: str, **model) -> str:
    with pytest.raises(ConfigError) as e:
        check_model_config(_config(name, **model))
    message = str(e.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_a_path_that_does_not_import() -> None:
    _refused("tests.no_such_module:Net", "'tests.no_such_module:Net'", "cannot import module")
    _refused("nopackage_xyz.nets:Net", "cannot import module 'nopackage_xyz.nets'")
    _refused(
        "tests.custom_broken_module:Net",
        "importing module 'tests.custom_broken_module' raised RuntimeError",
        "broken on purpose",
    )
    _refused("examples.custom_vae:NoSuchClass", "has no 'NoSuchClass'")


def test_a_name_that_is_not_an_nn_module_class() -> None:
    _refused("tests.custom_nets:not_a_class", "'not_a_class' is a function, not a class")
    _refused("tests.custom_nets:NotAModule", "NotAModule is not a torch.nn.Module subclass")
    _refused("tests.custom_nets:BadKind", "genpar_family must be 'vae' or 'gan'", "'flow'")


def test_a_class_missing_a_required_method_or_module() -> None:
    _refused(
        "tests.custom_nets:NoImageShape",
        "NoImageShape's constructor takes no image_shape argument",
        "latent_dim=model.latent_dim, **model.options",
    )
    _refused(
        "tests.custom_nets:NoLoss", "'tests.custom_nets:NoLoss'", "lacks the method(s) loss, mean"
    )
    _refused("tests.custom_nets:NoDiscriminator", "GAN-like", "no discriminator submodule")


def test_options_the_class_rejects_surface_its_own_message() -> None:
    _refused(
        VAE_PATH,
        "model.options={'hidden': -3}",
        "rejected them: ValueError: hidden must be a positive integer, got -3",
        options={"hidden": -3},
    )
    _refused(VAE_PATH, "unexpected keyword argument 'width'", "TypeError", options={"width": 3})
    # options of the built-ins stay empty
    _refused("vae", "the vae family does not read model.options", options={"hidden": 3})


def test_a_spec_that_does_not_round_trip() -> None:
    _refused(
        "tests.custom_nets:Drifting",
        "'tests.custom_nets:Drifting'",
        "its spec does not round-trip",
        "net.encoder.0.weight",
        options={"hidden": 8},
    )


def test_wrong_shapes_are_refused_before_training() -> None:
    _refused("tests.custom_nets:WrongLatent", "encode(x)[0] (mu) must be a tensor of shape (2, 4)")
    _refused("tests.custom_nets:Exploding", "generator(z) must be a tensor of shape (2, 1, 8, 8)")
    _refused(VAE_PATH, "takes its sizes from model.options", base_channels=16)


def test_spec_with_unknown_keys_is_refused() -> None:
    spec = build_model(_config(VAE_PATH).model, (1, 8, 8)).model_spec()
    with pytest.raises(ConfigError, match="unexpected keys"):
        build_model_from_spec({**spec, "likelihood": "bernoulli"})
    with pytest.raises(ConfigError, match=r"missing \['latent_dim'\]"):
        build_model_from_spec({k: v for k, v in spec.items() if k != "latent_dim"})


def test_the_check_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    check_model_config(_config(VAE_PATH, options={"hidden": 8}))
    assert torch.equal(torch.rand(3), want)


def test_reading_a_custom_config_imports_neither_torch_nor_the_class() -> None:
    code = (
        "import sys; from genpar_models.config import load_config; "
        f"cfg = load_config('examples/custom_vae.yaml'); assert cfg.model.name == {VAE_PATH!r}; "
        "assert 'torch' not in sys.modules and 'examples.custom_vae' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_a_module_under_the_working_directory_imports_and_ranks_get_its_root(
    tmp_path: Path,
) -> None:
    """`genpar` (a console script) does not put the working directory on sys.path; the class
    is found there anyway, and the launcher puts its root on the ranks' PYTHONPATH."""
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "vae.py").write_text((REPO / "examples" / "custom_vae.py").read_text())
    code = (
        "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
        "from genpar_models.models import get_family; get_family('mynets.vae:TinyVAE'); "
        "from tasks.launcher import Plan, child_env; "
        "print(child_env(Plan(2, 'cpu', 1), None)['PYTHONPATH'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(tmp_path.resolve()) in out.strip().split(os.pathsep)


@pytest.mark.parametrize("path", [VAE_PATH, GAN_PATH])
def test_served_tasks_and_compression_variants(path: str) -> None:
    from genpar_models.infer.compress import build_variant
    from genpar_models.infer.serving import RequestError, Server, ServingSpec

    torch.manual_seed(0)
    model = build_model(_config(path, options={"hidden": 8}).model, (1, 8, 8)).eval()
    family = get_family(path)
    server = Server(model, family, ServingSpec(16, 100, (1, 8, 8)))
    (out,) = server.predict([{"n": 3, "seed": 1}])
    assert out["shape"] == [3, 1, 8, 8] and out["dtype"] == "uint8"
    image = np.full((1, 8, 8), 128, dtype=np.uint8).tolist()
    if path == VAE_PATH:
        (rec,) = server.predict([{"image": image}], {"task": "reconstruct"})
        assert np.array(rec["samples"]).shape == (1, 1, 8, 8)
        (terms,) = server.predict([{"image": image, "seed": 0}], {"task": "elbo"})
        assert terms["unit"] == "nats" and np.isfinite(terms["elbo"])
    else:
        with pytest.raises(RequestError, match="has no likelihood"):
            server.predict([{"image": image}], {"task": "elbo"})
    g = torch.Generator()
    want = model.sample(4, generator=g.manual_seed(3))
    for variant in ("fp32", "bf16", "int8", "prune50"):
        got = build_variant(model, variant).sample(4, generator=g.manual_seed(3))
        assert got.shape == want.shape and got.dtype == torch.float32, variant
        assert torch.isfinite(got).all() and 0 <= float(got.min()) <= float(got.max()) <= 1
    assert torch.equal(build_variant(model, "fp32").sample(4, generator=g.manual_seed(3)), want)


def test_options_take_overrides_and_keep_configs_hashable() -> None:
    from genpar_models.config.loading import check_dotted_key

    path = REPO / "examples" / "custom_vae.yaml"
    cfg = load_config(path, ["model.options.hidden=64", "model.options.extra.deep=1"])
    assert cfg.model.options == {"hidden": 64, "layers": 2, "extra": {"deep": 1}}
    assert hash(cfg) != hash(load_config(path)) and hash(load_config(path)) == hash(
        load_config(path)
    )
    check_dotted_key("model.options.hidden", "sweep.params")  # a sweep may vary an option
    assert cfg.flat()["model.options.hidden"] == 64  # logged as its own MLflow param
    with pytest.raises(ConfigError, match="unknown key 'optionz'"):
        load_config(path, ["model.optionz.hidden=1"])


def test_the_prefect_form_shows_options_as_a_json_object() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    schema = parameter_schema(pipeline).model_dump()
    options = schema["definitions"]["ModelConfig"]["properties"]["options"]
    assert options["type"] == "object" and options["additionalProperties"] is True
    assert "package.module:ClassName" in options["description"]


def test_an_edited_network_is_changed_code_for_the_nightly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genpar_models.eval.promotion import changes
    from genpar_models.models.custom.loader import network_lineage

    assert network_lineage("vae") == {}
    (tmp_path / "edited_nets").mkdir()
    (tmp_path / "edited_nets" / "__init__.py").write_text("")
    module = tmp_path / "edited_nets" / "vae.py"
    module.write_text((REPO / "examples" / "custom_vae.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    before = network_lineage("edited_nets.vae:TinyVAE")
    assert before == network_lineage("edited_nets.vae:TinyVAE")  # stable
    module.write_text(module.read_text() + "\n# a changed activation, say\n")
    after = network_lineage("edited_nets.vae:TinyVAE")
    assert after["network_code"] != before["network_code"]
    facts = {"fingerprint": "f", "identity": "i"}
    said = changes(
        {**facts, "lineage": {"genpar": "1", **before}},
        {**facts, "lineage": {"genpar": "1", **after}},
    )
    assert said == [f"code: network_code {before['network_code']} -> {after['network_code']}"]
    # an installed package is known by its distribution's version
    assert network_lineage("torch.nn:Linear")["network_code"].startswith("torch==")
