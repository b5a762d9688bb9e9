"""A sequence pipeline in the Prefect deployments `genpar serve` serves: the run form (the
deployment's parameter schema) offers the sequence options, and the form's values (the served
config's, as the UI submits them) validate back into the same sequence config for the pipeline
and the nightly retrain."""

from __future__ import annotations

from flows.deployments import build_deployments
from flows.nightly import nightly_retrain
from flows.pipeline import pipeline
from genpar_models.config import PipelineConfig, load_config
from tests.conftest import REPO


def test_the_run_form_of_a_sequence_config_round_trips() -> None:
    cfg = load_config(REPO / "configs" / "tiny-sequences.yaml")
    deployments = {d.name: d for d in build_deployments(cfg)}
    for name, flow in (("pipeline", pipeline), ("nightly-retrain", nightly_retrain)):
        dep = deployments[name]
        schema = dep._parameter_openapi_schema.model_dump()
        data = schema["definitions"]["DataConfig"]["properties"]
        assert "sequences" in str(data["modality"]) and "japanese_vowels" in str(data["source"])
        assert "decoder_input" in schema["definitions"]["ModelConfig"]["properties"]
        submitted = flow.validate_parameters(dep.parameters)["config"]
        assert isinstance(submitted, PipelineConfig)
        assert submitted == cfg and submitted.data.modality == "sequences"
        assert submitted.model.name == "rvae"
